//! Docker's default seccomp profile as an OCI `linux.seccomp` section: what the sandbox (and
//! `runc`/`crun` for `--runtime`) loads before the command runs. Syscalls are allowed by name;
//! the rest fail with `EPERM`, and `clone3` with `ENOSYS` so that libc falls back to `clone`.

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use crate::ExecError;

/// Docker's default profile: syscalls allowed whatever the capabilities.
pub(crate) const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "ptrace",
    "arch_prctl",
    "modify_ldt",
];

/// Docker's default profile: syscalls allowed when the bounding set has the capability.
pub(crate) const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// `clone` flags that create namespaces: refused without `CAP_SYS_ADMIN`.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// `personality` values Docker allows (Linux, `UNAME26`, `PER_LINUX32` and the query).
const PERSONALITIES: [u64; 5] = [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

fn spec_err(e: oci_spec::OciSpecError) -> ExecError {
    ExecError::Spec(e)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn syscall(
    list: &[&str],
    action: LinuxSeccompAction,
    errno: Option<u32>,
    args: Vec<oci_spec::runtime::LinuxSeccompArg>,
) -> Result<LinuxSyscall, ExecError> {
    let mut b = LinuxSyscallBuilder::default()
        .names(names(list))
        .action(action);
    if let Some(e) = errno {
        b = b.errno_ret(e);
    }
    if !args.is_empty() {
        b = b.args(args);
    }
    b.build().map_err(spec_err)
}

fn arg(
    index: usize,
    value: u64,
    value_two: u64,
    op: LinuxSeccompOperator,
) -> Result<oci_spec::runtime::LinuxSeccompArg, ExecError> {
    LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .value_two(value_two)
        .op(op)
        .build()
        .map_err(spec_err)
}

/// File types `mknod` may still create under [`refuse_device_nodes`]: 0 (a regular file),
/// regular files, fifos and sockets.
const NON_DEVICE_TYPES: [u32; 4] = [0, libc::S_IFREG, libc::S_IFIFO, libc::S_IFSOCK];

/// Make `profile` refuse (`EPERM`) `mknod` and `mknodat` of character and block devices, for a
/// runtime that can neither keep the root `nodev` nor run the step under a device cgroup (crun
/// without cgroups): a node the step could make there would open the host's device. Fifos,
/// sockets and regular files are still allowed.
pub(crate) fn refuse_device_nodes(profile: &mut LinuxSeccomp) -> Result<(), ExecError> {
    const MKNOD: [(&str, usize); 2] = [("mknod", 1), ("mknodat", 2)];
    let mut rules: Vec<LinuxSyscall> = Vec::new();
    for mut rule in profile.syscalls().clone().unwrap_or_default() {
        let kept: Vec<String> = rule
            .names()
            .iter()
            .filter(|n| !MKNOD.iter().any(|(m, _)| n == m))
            .cloned()
            .collect();
        if !kept.is_empty() {
            rule.set_names(kept);
            rules.push(rule);
        }
    }
    let mask = u64::from(libc::S_IFMT);
    if profile.default_action() == LinuxSeccompAction::ScmpActAllow {
        for (name, index) in MKNOD {
            for typ in [libc::S_IFCHR, libc::S_IFBLK] {
                let cond = arg(
                    index,
                    mask,
                    u64::from(typ),
                    LinuxSeccompOperator::ScmpCmpMaskedEq,
                )?;
                rules.push(syscall(
                    &[name],
                    LinuxSeccompAction::ScmpActErrno,
                    Some(libc::EPERM as u32),
                    vec![cond],
                )?);
            }
        }
    } else {
        for (name, index) in MKNOD {
            for typ in NON_DEVICE_TYPES {
                let cond = arg(
                    index,
                    mask,
                    u64::from(typ),
                    LinuxSeccompOperator::ScmpCmpMaskedEq,
                )?;
                rules.push(syscall(
                    &[name],
                    LinuxSeccompAction::ScmpActAllow,
                    None,
                    vec![cond],
                )?);
            }
        }
    }
    profile.set_syscalls(Some(rules));
    Ok(())
}

/// Docker's default seccomp profile for a process whose bounding set is `bounding`: the
/// capability-gated syscalls (`mount`, `unshare`... with `CAP_SYS_ADMIN`) follow the set.
pub fn default_seccomp(bounding: &Capabilities) -> Result<LinuxSeccomp, ExecError> {
    let allow = LinuxSeccompAction::ScmpActAllow;
    let mut rules = vec![syscall(ALLOWED, allow, None, vec![])?];
    for value in PERSONALITIES {
        rules.push(syscall(
            &["personality"],
            allow,
            None,
            vec![arg(0, value, 0, LinuxSeccompOperator::ScmpCmpEq)?],
        )?);
    }
    for (cap, list) in BY_CAPABILITY {
        if bounding.contains(cap) {
            rules.push(syscall(list, allow, None, vec![])?);
        }
    }
    if bounding.contains(&Capability::SysAdmin) {
        rules.push(syscall(&["clone", "clone3"], allow, None, vec![])?);
    } else {
        rules.push(syscall(
            &["clone"],
            allow,
            None,
            vec![arg(
                0,
                CLONE_NAMESPACE_FLAGS,
                0,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            )?],
        )?);
        rules.push(syscall(
            &["clone3"],
            LinuxSeccompAction::ScmpActErrno,
            Some(libc::ENOSYS as u32),
            vec![],
        )?);
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
            Arch::ScmpArchAarch64,
            Arch::ScmpArchArm,
        ])
        .syscalls(rules)
        .build()
        .map_err(spec_err)
}

#[cfg(test)]
mod device_node_tests {
    use super::*;

    fn rules_for(profile: &LinuxSeccomp, name: &str) -> Vec<LinuxSyscall> {
        profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|r| r.names().iter().any(|n| n == name))
            .cloned()
            .collect()
    }

    #[test]
    fn only_non_device_nodes_stay_allowed() {
        let caps: Capabilities = crate::spec::DOCKER_CAPS.iter().copied().collect();
        let mut profile = default_seccomp(&caps).unwrap();
        assert!(rules_for(&profile, "mknod")
            .iter()
            .any(|r| r.args().is_none()));
        refuse_device_nodes(&mut profile).unwrap();
        for (name, index) in [("mknod", 1), ("mknodat", 2)] {
            let rules = rules_for(&profile, name);
            assert_eq!(rules.len(), NON_DEVICE_TYPES.len(), "{name}");
            for r in &rules {
                assert_eq!(r.action(), LinuxSeccompAction::ScmpActAllow);
                let args = r.args().as_ref().expect("only with a file type");
                assert_eq!(args.len(), 1);
                assert_eq!(args[0].index(), index);
                assert_eq!(args[0].value(), u64::from(libc::S_IFMT));
                let typ = args[0].value_two().unwrap_or(0) as u32;
                assert!(
                    ![libc::S_IFCHR, libc::S_IFBLK].contains(&typ),
                    "{name}: {typ:o}"
                );
            }
        }
        // Everything else is still allowed as before.
        assert!(!rules_for(&profile, "openat").is_empty());
    }

    #[test]
    fn a_permissive_profile_gets_refusals() {
        let mut profile = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .build()
            .unwrap();
        refuse_device_nodes(&mut profile).unwrap();
        let rules = rules_for(&profile, "mknodat");
        assert_eq!(rules.len(), 2);
        assert!(rules
            .iter()
            .all(|r| r.action() == LinuxSeccompAction::ScmpActErrno));
    }
}
