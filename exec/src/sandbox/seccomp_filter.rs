//! Compiles an OCI `linux.seccomp` section into BPF (with seccompiler) and loads it in the
//! command process, as runc does: one filter for the default action and the allowed syscalls,
//! and one more per other action (the kernel applies the strictest result of all filters).

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::syscalls::syscall_number;

fn action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    default_errno: u32,
) -> Result<SeccompAction, String> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(default_errno)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        other => {
            return Err(format!(
                "seccomp action `{other:?}` is not supported by the built-in runtime; use `--runtime runc`"
            ))
        }
    })
}

fn condition(a: &oci_spec::runtime::LinuxSeccompArg) -> Result<SeccompCondition, String> {
    let index = u8::try_from(a.index())
        .map_err(|_| format!("seccomp argument index {} is out of range", a.index()))?;
    let (op, value) = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
        // libseccomp: (arg & value) == valueTwo.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(a.value()),
            a.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| format!("invalid seccomp condition: {e}"))
}

/// What one action's filter matches: syscall → rules (empty: every call).
type Matches = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add(m: &mut Matches, nr: i64, rule: Option<SeccompRule>) {
    let entry = m.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), rule) {
        // Already unconditional.
        (None, _) => {}
        (Some(_), None) => *entry = None,
        (Some(rules), Some(r)) => rules.push(r),
    }
}

fn finish(m: Matches) -> BTreeMap<i64, Vec<SeccompRule>> {
    m.into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect()
}

/// The BPF programs for `seccomp` on this machine's architecture. Names this architecture
/// lacks are skipped, as libseccomp does.
pub(crate) fn compile(seccomp: &LinuxSeccomp) -> Result<Vec<BpfProgram>, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| format!("seccomp is not supported on `{}`", std::env::consts::ARCH))?;
    let default_errno = seccomp.default_errno_ret().unwrap_or(libc::EPERM as u32);
    let default = action(seccomp.default_action(), None, default_errno)?;
    let mut allowed = Matches::new();
    let mut others: Vec<(SeccompAction, Matches)> = Vec::new();
    for s in seccomp.syscalls().iter().flatten() {
        let act = action(s.action(), s.errno_ret(), default_errno)?;
        let rule = match s.args() {
            Some(args) if !args.is_empty() => Some(
                SeccompRule::new(args.iter().map(condition).collect::<Result<_, _>>()?)
                    .map_err(|e| format!("invalid seccomp rule: {e}"))?,
            ),
            _ => None,
        };
        for name in s.names() {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            if act == SeccompAction::Allow {
                add(&mut allowed, nr, rule.clone());
            } else if act != default {
                // It must get past the first filter to reach its own.
                add(&mut allowed, nr, None);
                let slot = match others.iter().position(|(a, _)| *a == act) {
                    Some(i) => i,
                    None => {
                        others.push((act.clone(), Matches::new()));
                        others.len() - 1
                    }
                };
                add(&mut others[slot].1, nr, rule.clone());
            }
        }
    }
    let mut programs = Vec::new();
    let build = |rules, mismatch, matched| -> Result<BpfProgram, String> {
        SeccompFilter::new(rules, mismatch, matched, arch)
            .and_then(|f| f.try_into())
            .map_err(|e| format!("cannot compile the seccomp profile: {e}"))
    };
    if default != SeccompAction::Allow {
        programs.push(build(finish(allowed), default, SeccompAction::Allow)?);
    }
    for (act, m) in others {
        programs.push(build(finish(m), SeccompAction::Allow, act)?);
    }
    Ok(programs)
}

/// Loads the programs into this process (and what it execs). Without `no_new_privs` this needs
/// `CAP_SYS_ADMIN`, so call it before dropping capabilities.
pub(crate) fn load(programs: &[BpfProgram]) -> Result<(), String> {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const seccompiler::sock_filter,
    }
    for p in programs {
        let len = libc::c_ushort::try_from(p.len())
            .map_err(|_| format!("the seccomp filter is too long ({} instructions)", p.len()))?;
        let prog = SockFprog {
            len,
            filter: p.as_ptr(),
        };
        // SAFETY: seccomp(2) copies the program the pointer describes; both live through the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0 as libc::c_ulong,
                &prog as *const SockFprog,
            )
        };
        if r != 0 {
            return Err(format!(
                "cannot load the seccomp filter: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_profile_compiles_for_this_machine() {
        let caps: oci_spec::runtime::Capabilities =
            crate::spec::DOCKER_CAPS.iter().copied().collect();
        let profile = crate::seccomp_profile::default_seccomp(&caps).unwrap();
        let programs = compile(&profile).unwrap();
        // Allow-list filter plus the `clone3` → ENOSYS one.
        assert_eq!(programs.len(), 2);
        assert!(programs[0].len() > 300, "{}", programs[0].len());
        assert!(syscall_number("unshare").is_some());
        assert!(syscall_number("no_such_call").is_none());
    }
}
