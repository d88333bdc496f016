//! The command process: drops to the spec's user and capabilities, enters its cwd and execs it.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Capabilities, LinuxCapabilities, LinuxSeccomp, Process};

use super::signals;
use crate::spec::{cap_number, DEFAULT_PATH};
use crate::wire::SETUP_FAILED;

/// Prefix of a setup failure on the status pipe (as opposed to a failed exec, reported by the
/// exit code and a message on stderr).
pub(crate) const SETUP_ERROR: &[u8] = b"S";

/// Become the command. Returns only on failure, with the exit code to use.
pub(crate) fn exec(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
    own_terminal: bool,
    status: OwnedFd,
) -> i32 {
    signals::reset_for_exec();
    match prepare(process, seccomp, own_terminal) {
        Err(msg) => {
            let mut f = std::fs::File::from(status);
            let mut report = SETUP_ERROR.to_vec();
            report.extend_from_slice(msg.as_bytes());
            let _ = f.write_all(&report);
            SETUP_FAILED
        }
        Ok(prepared) => {
            let (code, msg) = execute(&prepared);
            let _ = writeln!(std::io::stderr(), "kiln: {msg}");
            code
        }
    }
}

struct Prepared {
    arg0: String,
    argv: Vec<CString>,
    envp: Vec<CString>,
    path_var: String,
}

/// A command with a pseudo-terminal of its own on stdin starts a session with it as its
/// controlling terminal, so that the terminal's Ctrl-C, resize and hang-up reach its foreground
/// process group, as under `docker run -t`.
fn take_terminal() -> Result<(), String> {
    nix::unistd::setsid().map_err(|e| format!("cannot start a session for the terminal: {e}"))?;
    // SAFETY: TIOCSCTTY with 0 (never steal a terminal another session holds) on fd 0 changes
    // only this process's session.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(format!(
            "cannot make the container's terminal its controlling terminal: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} `{}` contains a NUL byte", s.escape_debug()))
}

fn prepare(
    process: &Process,
    seccomp: Option<&LinuxSeccomp>,
    own_terminal: bool,
) -> Result<Prepared, String> {
    let args = process.args().as_deref().unwrap_or(&[]);
    let Some(arg0) = args.first() else {
        return Err("`process.args` is empty".into());
    };
    let env = process.env().as_deref().unwrap_or(&[]);
    let argv = args
        .iter()
        .map(|a| cstring(a, "argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|e| cstring(e, "environment variable"))
        .collect::<Result<Vec<_>, _>>()?;
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();

    if own_terminal {
        take_terminal()?;
    }
    // Compiled while we may still allocate freely; loaded below at the last possible moment.
    let filters = seccomp.map(super::seccomp_filter::compile).transpose()?;
    let no_new_privs = process.no_new_privileges() == Some(true);
    apply_rlimits(process)?;
    join_new_session_keyring()?;
    let user = process.user();
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    let caps = process.capabilities().as_ref();
    if let Some(c) = caps {
        drop_bounding(c.bounding())?;
        // Keep the permitted set across setuid so that capset below can trim it.
        prctl(libc::PR_SET_KEEPCAPS, 1, "keep capabilities")?;
    }
    if let (Some(f), false) = (&filters, no_new_privs) {
        // Without no_new_privs, loading needs CAP_SYS_ADMIN: before the credentials change.
        super::seccomp_filter::load(f)?;
    }
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // Rootless without subordinate gids, setgroups is denied in the namespace: only one gid
    // exists there, so a list of no more than the primary gid asks for nothing to change.
    let only_primary = groups.iter().all(|g| g.as_raw() == user.gid());
    if !(only_primary && setgroups_denied()) {
        nix::unistd::setgroups(&groups).map_err(|e| {
            if setgroups_denied() {
                format!(
                    "cannot set supplementary groups {groups:?}: rootless kiln has only your own group mapped; {SUBIDS_HINT}"
                )
            } else {
                format!("cannot set supplementary groups {groups:?}: {e}")
            }
        })?;
    }
    let gid = Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| unmapped("group", gid.as_raw(), e))?;
    let uid = Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| unmapped("user", uid.as_raw(), e))?;
    if let Some(c) = caps {
        set_capabilities(c)?;
    }
    if no_new_privs {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "set no_new_privs")?;
        if let Some(f) = &filters {
            super::seccomp_filter::load(f)?;
        }
    }
    let cwd = process.cwd();
    nix::unistd::chdir(cwd).map_err(|e| match e {
        Errno::ENOENT => format!(
            "working directory `{}` does not exist in the image; create it first (e.g. `WORKDIR` or `mkdir -p`)",
            cwd.display()
        ),
        Errno::ENOTDIR => format!("working directory `{}` is not a directory", cwd.display()),
        Errno::EACCES => format!(
            "working directory `{}` is not accessible to uid {uid}",
            cwd.display()
        ),
        e => format!("cannot enter working directory `{}`: {e}", cwd.display()),
    })?;
    Ok(Prepared {
        arg0: arg0.clone(),
        argv,
        envp,
        path_var,
    })
}

/// Give the command a new, empty session keyring instead of the engine's, as runc and crun do
/// for every container: it inherits the caller's otherwise, and with seccomp off (or a profile
/// that allows `keyctl`) a step could read and change the keys of the session that runs kiln.
fn join_new_session_keyring() -> Result<(), String> {
    // SAFETY: keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL) takes no buffer: NULL asks for a new
    // anonymous keyring.
    let r = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_JOIN_SESSION_KEYRING as libc::c_long,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if r >= 0 {
        return Ok(());
    }
    match Errno::last() {
        // No key support in the kernel, or keyctl refused to kiln itself (kiln running under a
        // seccomp profile such as Docker's): the step inherits that refusal, there is no keyring
        // for it to reach.
        Errno::ENOSYS | Errno::EPERM | Errno::EACCES => Ok(()),
        Errno::EDQUOT => Err(
            "cannot give the step its own session keyring: the key quota of uid 0 is used up; raise `/proc/sys/kernel/keys/root_maxkeys` or free keys (`keyctl show`)"
                .to_string(),
        ),
        e => Err(format!("cannot give the step its own session keyring: {e}")),
    }
}

/// What to do when rootless kiln lacks ids.
const SUBIDS_HINT: &str = "give your user ranges in /etc/subuid and /etc/subgid (e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER`) and install `newuidmap`/`newgidmap` (package uidmap), or build as root";

fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

/// EINVAL from setresuid/setresgid: the id does not exist in this user namespace.
fn unmapped(kind: &str, id: u32, e: Errno) -> String {
    if e == Errno::EINVAL && crate::rootless::in_user_namespace() {
        format!(
            "cannot switch to {kind} id {id}: it is not mapped in rootless kiln's user namespace; {SUBIDS_HINT}"
        )
    } else {
        format!("cannot set {kind} id {id}: {e}")
    }
}

/// Exec the program; on failure returns the exit code (127 not found, 126 not runnable) and why.
fn execute(p: &Prepared) -> (i32, String) {
    let candidates: Vec<String> = if p.arg0.contains('/') {
        vec![p.arg0.clone()]
    } else {
        p.path_var
            .split(':')
            .map(|dir| {
                let dir = if dir.is_empty() { "." } else { dir };
                format!("{}/{}", dir.trim_end_matches('/'), p.arg0)
            })
            .collect()
    };
    let mut denied = None;
    for candidate in &candidates {
        let path = Path::new(candidate);
        let Ok(md) = std::fs::metadata(path) else {
            continue;
        };
        if md.is_dir() {
            denied.get_or_insert((candidate.clone(), "is a directory".to_string()));
            continue;
        }
        if md.permissions().mode() & 0o111 == 0 {
            denied.get_or_insert((candidate.clone(), "permission denied".to_string()));
            continue;
        }
        let Ok(c_path) = CString::new(candidate.as_str()) else {
            continue;
        };
        let err = match nix::unistd::execve(&c_path, &p.argv, &p.envp) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        let why = match err {
            Errno::ENOENT => {
                "its interpreter or a library it needs is missing (no such file or directory)"
                    .to_string()
            }
            Errno::EACCES => "permission denied".to_string(),
            Errno::ENOEXEC => "not an executable format; add a `#!` line to scripts".to_string(),
            e => e.desc().to_string(),
        };
        let code = if err == Errno::ENOENT { 127 } else { 126 };
        return (code, format!("cannot run {candidate:?}: {why}"));
    }
    if let Some((path, why)) = denied {
        return (126, format!("cannot run {path:?}: {why}"));
    }
    if p.arg0.contains('/') {
        (
            127,
            format!("cannot run {:?}: no such file or directory", p.arg0),
        )
    } else {
        (
            127,
            format!(
                "cannot run {:?}: not found in PATH ({}); install it in the image or give its full path",
                p.arg0, p.path_var
            ),
        )
    }
}

fn prctl(option: libc::c_int, arg: libc::c_ulong, what: &str) -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            option,
            arg,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(format!(
            "cannot {what}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn mask(set: &Option<Capabilities>) -> u64 {
    set.iter()
        .flatten()
        .filter_map(|c| cap_number(*c))
        .fold(0u64, |m, n| m | (1u64 << n))
}

fn drop_bounding(bounding: &Option<Capabilities>) -> Result<(), String> {
    let keep = mask(bounding);
    for cap in 0..64u64 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            // EINVAL: past the kernel's last capability.
            if Errno::last() == Errno::EINVAL {
                break;
            }
            return Err(format!(
                "cannot drop capability {cap} from the bounding set: {}",
                Errno::last()
            ));
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn set_capabilities(c: &LinuxCapabilities) -> Result<(), String> {
    let (eff, perm, inh) = (
        mask(c.effective()),
        mask(c.permitted()),
        mask(c.inheritable()),
    );
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: eff as u32,
            permitted: perm as u32,
            inheritable: inh as u32,
        },
        CapData {
            effective: (eff >> 32) as u32,
            permitted: (perm >> 32) as u32,
            inheritable: (inh >> 32) as u32,
        },
    ];
    // SAFETY: capset reads one header and two data structs (version 3), both alive here.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if r < 0 {
        return Err(format!(
            "cannot set capabilities: {}",
            std::io::Error::last_os_error()
        ));
    }
    let ambient = mask(c.ambient());
    for cap in 0..64u64 {
        if ambient & (1 << cap) == 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if r < 0 {
            return Err(format!(
                "cannot raise ambient capability {cap}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn apply_rlimits(process: &Process) -> Result<(), String> {
    for limit in process.rlimits().iter().flatten() {
        let name = serde_json::to_value(limit.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let Some(resource) = rlimit_number(&name) else {
            return Err(format!("unknown rlimit `{name}`"));
        };
        let value = libc::rlimit {
            rlim_cur: limit.soft(),
            rlim_max: limit.hard(),
        };
        // SAFETY: setrlimit reads one rlimit struct we own.
        if unsafe { libc::setrlimit(resource, &value) } == 0 {
            continue;
        }
        let err = std::io::Error::last_os_error();
        // Raising a hard limit needs CAP_SYS_RESOURCE in the host's user namespace, which a
        // rootless engine lacks: the limit is then capped at the engine's own hard limit.
        let capped = err.raw_os_error() == Some(libc::EPERM) && cap_at_hard_limit(resource, value);
        if !capped {
            return Err(format!(
                "cannot set {name} to {}/{}: {err}",
                limit.soft(),
                limit.hard(),
            ));
        }
    }
    Ok(())
}

/// Set `wanted` lowered to the current hard limit when it asks for more; whether that worked.
fn cap_at_hard_limit(resource: libc::__rlimit_resource_t, wanted: libc::rlimit) -> bool {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    if unsafe { libc::getrlimit(resource, &mut current) } < 0 || current.rlim_max >= wanted.rlim_max
    {
        return false;
    }
    let lowered = libc::rlimit {
        rlim_cur: wanted.rlim_cur.min(current.rlim_max),
        rlim_max: current.rlim_max,
    };
    // SAFETY: setrlimit reads one rlimit struct we own.
    unsafe { libc::setrlimit(resource, &lowered) == 0 }
}

/// The kernel's number of an OCI rlimit type.
pub(crate) fn rlimit_resource(
    typ: oci_spec::runtime::PosixRlimitType,
) -> Option<libc::__rlimit_resource_t> {
    let name = serde_json::to_value(typ)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))?;
    rlimit_number(&name)
}

fn rlimit_number(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimit_names_map() {
        assert_eq!(rlimit_number("RLIMIT_NOFILE"), Some(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_number("RLIMIT_BOGUS"), None);
    }

    #[test]
    fn capability_masks() {
        use oci_spec::runtime::Capability;
        let set: Capabilities = [Capability::Chown, Capability::CheckpointRestore]
            .into_iter()
            .collect();
        assert_eq!(mask(&Some(set)), 1 | (1 << 40));
        assert_eq!(mask(&None), 0);
    }
}
