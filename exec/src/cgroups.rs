//! Resource limits of a sandbox: `--memory`, `--cpus` and `--pids-limit`, parsed as Docker parses
//! them, written into the spec's `linux.resources`, and enforced by a cgroup of the sandbox's own.
//!
//! The built-in sandbox gets one cgroup per run, `kiln/<id>` at the root of every hierarchy
//! that has a controller it needs (as Docker's `docker/<id>` and BuildKit's `buildkit/<id>`):
//! cgroup v2 where the unified hierarchy offers the controller, else the v1 hierarchy of that
//! controller (hosts in "hybrid" mode have both). The helper is moved into it before it has read
//! its config, so everything it forks starts there. After the run the cgroup tells whether the
//! kernel killed a process for memory, and is removed (what is left in it killed first).
//!
//! Where the v1 `devices` controller exists, the same cgroup lets only the standard devices
//! open (Docker's list), whatever the runtime: defence in depth under the `nodev` mounts of the
//! built-in sandbox and runc, and the only thing keeping a node an image ships from opening
//! under crun, which remounts the root without `nodev`.
//!
//! A controller kiln cannot use (rootless without delegation, a kernel without it) costs the
//! limit, not the run: kiln says so once per process and goes on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, Spec,
};

use crate::ExecError;

/// The pids limit of every sandbox that sets none: a fork bomb stops there instead of filling
/// the host's pid table.
pub const DEFAULT_PIDS_LIMIT: i64 = 16_384;

/// The CFS period kiln uses with `--cpus` (Docker's).
const CPU_PERIOD_US: u64 = 100_000;

/// The smallest `--memory` Docker accepts: below it a container cannot even start.
const MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// Resource limits of a sandbox (`kiln build`/`kiln run` `--memory`, `--cpus`, `--pids-limit`),
/// and what else a build gives each of its sandboxes (`--shm-size`, `--ulimit`, `--add-host`,
/// see `extras.rs`): one value that reaches every `RUN` step's spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory the processes may use together, swap included.
    pub memory: Option<u64>,
    /// CPU time in billionths of a CPU (Docker's `NanoCPUs`): 500_000_000 is half a CPU.
    pub nano_cpus: Option<u64>,
    /// Most processes and threads at once; `None` is [`DEFAULT_PIDS_LIMIT`], `Some(-1)` none.
    pub pids: Option<i64>,
    /// `--shm-size`: bytes of the `/dev/shm` tmpfs (64 MiB when `None`, as Docker's).
    pub shm_size: Option<u64>,
    /// `--ulimit`: rlimits replacing the defaults of the same name.
    pub ulimits: Vec<crate::extras::Ulimit>,
    /// `--add-host`: `(name, ip)` lines added to `/etc/hosts`.
    pub extra_hosts: Vec<(String, String)>,
}

impl Limits {
    /// Parse the three flags' values as `docker run` does; each error names its flag.
    pub fn parse(
        memory: Option<&str>,
        cpus: Option<&str>,
        pids: Option<&str>,
    ) -> Result<Limits, ExecError> {
        Ok(Limits {
            // 0 is no limit, as with Docker.
            memory: memory
                .map(|m| parse_memory("--memory", m))
                .transpose()?
                .filter(|b| *b > 0),
            nano_cpus: cpus.map(parse_cpus).transpose()?.filter(|n| *n > 0),
            pids: pids.map(parse_pids).transpose()?,
            ..Limits::default()
        })
    }

    /// Write the limits into `spec`'s `linux.resources` (the default pids limit when none is
    /// set), as an OCI runtime reads them.
    pub fn apply_to(&self, spec: &mut Spec) -> Result<(), ExecError> {
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_resources(Some(self.resources()?));
        spec.set_linux(Some(linux));
        crate::extras::apply(spec, self.shm_size, &self.ulimits, &self.extra_hosts)
    }

    fn resources(&self) -> Result<LinuxResources, ExecError> {
        let err = ExecError::Spec;
        let mut r = LinuxResources::default();
        if let Some(bytes) = self.memory {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            // `swap` is memory plus swap: equal to the limit, the step gets no swap at all,
            // so that the limit is what it can use.
            r.set_memory(Some(
                LinuxMemoryBuilder::default()
                    .limit(bytes)
                    .swap(bytes)
                    .build()
                    .map_err(err)?,
            ));
        }
        if let Some(nano) = self.nano_cpus {
            r.set_cpu(Some(
                LinuxCpuBuilder::default()
                    .quota(cpu_quota(nano))
                    .period(CPU_PERIOD_US)
                    .build()
                    .map_err(err)?,
            ));
        }
        let pids = self.pids.unwrap_or(DEFAULT_PIDS_LIMIT);
        r.set_pids(Some(
            LinuxPidsBuilder::default()
                .limit(pids)
                .build()
                .map_err(err)?,
        ));
        Ok(r)
    }
}

/// The quota per [`CPU_PERIOD_US`] of `nano_cpus` (as Docker computes it).
fn cpu_quota(nano_cpus: u64) -> i64 {
    let quota = u128::from(nano_cpus) * u128::from(CPU_PERIOD_US) / 1_000_000_000;
    i64::try_from(quota).unwrap_or(i64::MAX)
}

fn invalid(flag: &str, value: &str, reason: impl Into<String>) -> ExecError {
    ExecError::InvalidLimit {
        flag: flag.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A size as Docker's `RAMInBytes` reads it: a number (fractions allowed) with an optional unit
/// `b`, `k`, `m`, `g`, `t` or `p` (powers of 1024, any case, an optional `b`/`ib` after it).
pub fn parse_size(flag: &str, value: &str) -> Result<u64, ExecError> {
    let hint = "give a size such as `512m`, `1g` or `1073741824` (units b, k, m, g, t)";
    let text = value.trim();
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let unit = unit.trim_start().to_ascii_lowercase();
    let shift = match unit.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return Err(invalid(flag, value, hint)),
    };
    if number.is_empty()
        || number.starts_with('.')
        || number.ends_with('.')
        || number.matches('.').count() > 1
    {
        return Err(invalid(flag, value, hint));
    }
    let bytes = scaled(number, shift);
    bytes.ok_or_else(|| invalid(flag, value, format!("{hint}; this one is too large")))
}

/// `number` (digits with at most one `.`) times 2^`shift`, truncated to whole bytes as Docker
/// truncates it; `None` when it does not fit.
fn scaled(number: &str, shift: u32) -> Option<u64> {
    let unit = 1u128 << shift;
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let whole: u128 = whole.parse().ok()?;
    // Exact integer arithmetic: nine decimals are more than any unit needs.
    let frac = frac.get(..frac.len().min(9)).unwrap_or("");
    let frac_n: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let scale = 10u128.pow(frac.len() as u32);
    let total = whole.checked_mul(unit)? + frac_n * unit / scale;
    u64::try_from(total).ok()
}

fn parse_memory(flag: &str, value: &str) -> Result<u64, ExecError> {
    let bytes = parse_size(flag, value)?;
    if bytes > 0 && bytes < MIN_MEMORY {
        return Err(invalid(
            flag,
            value,
            "the smallest memory limit is 6 MiB (`6m`), as with Docker",
        ));
    }
    Ok(bytes)
}

/// `--cpus`: a decimal number of CPUs, from 0.01 to the host's (0: no limit).
fn parse_cpus(value: &str) -> Result<u64, ExecError> {
    let flag = "--cpus";
    let cpus: f64 = value
        .trim()
        .parse()
        .ok()
        .filter(|c: &f64| c.is_finite())
        .ok_or_else(|| invalid(flag, value, "give a number of CPUs such as `0.5` or `2`"))?;
    let available = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cpus == 0.0 {
        return Ok(0);
    }
    if cpus < 0.01 {
        return Err(invalid(
            flag,
            value,
            format!("give at least `0.01` (and at most `{available}`, the CPUs of this host)"),
        ));
    }
    if cpus > available as f64 {
        return Err(invalid(
            flag,
            value,
            format!("this host has only {available} CPUs; give at most `{available}`"),
        ));
    }
    Ok((cpus * 1e9).round() as u64)
}

/// `--shm-size 128m`: bytes, above zero.
pub fn parse_shm_size(value: &str) -> Result<u64, ExecError> {
    match parse_size("--shm-size", value)? {
        0 => Err(invalid(
            "--shm-size",
            value,
            "give a size above zero, e.g. `128m`",
        )),
        n => Ok(n),
    }
}

/// `--pids-limit`: a positive number; `-1` or `0` for none (Docker's meaning).
fn parse_pids(value: &str) -> Result<i64, ExecError> {
    let n: i64 = value.trim().parse().map_err(|_| {
        invalid(
            "--pids-limit",
            value,
            "give a whole number of processes such as `1024`, or `-1` for no limit",
        )
    })?;
    match n {
        -1 | 0 => Ok(-1),
        n if n > 0 => Ok(n),
        _ => Err(invalid(
            "--pids-limit",
            value,
            "give a positive number of processes, or `-1` for no limit",
        )),
    }
}

/// `bytes` as people write limits: `512 MiB`, `2 GiB`, `1000 bytes`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, name) in UNITS {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{} {name}", bytes / unit);
        }
    }
    if bytes >= 1 << 20 {
        return format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20));
    }
    format!("{bytes} bytes")
}

/// The devices a sandbox may open (`rwm`) besides making any node (`m`): Docker's and runc's
/// default list. `null zero full random urandom`, `tty`, `console`, `ptmx` and `/dev/pts/*`.
const ALLOWED_DEVICES: [&str; 11] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// What runc 1.1 allows besides [`ALLOWED_DEVICES`] (`/dev/net/tun`, dropped again in runc
/// 1.2), in the device cgroup it makes below kiln's: v1 refuses a child any device its parent
/// denies, so runc would fail to start unless kiln's allows it too. Only for a runtime with
/// a cgroup of its own: the container then gets what that runtime grants, as under Docker.
const RUNTIME_CGROUP_DEVICES: [&str; 1] = ["c 10:200 rwm"];

/// The cgroup controllers kiln uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Controller {
    Memory,
    Pids,
    Cpu,
    /// cgroup v1 only (v2 filters devices with an eBPF program instead, which kiln does not
    /// load: there the `nodev` mounts alone keep nodes from opening).
    Devices,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
            Controller::Devices => "devices",
        }
    }

    /// What the limit is called for a user, for the warning when it cannot be applied.
    fn what(self) -> &'static str {
        match self {
            Controller::Memory => "memory (`--memory`)",
            Controller::Pids => "number of processes (`--pids-limit`, 16384 by default)",
            Controller::Cpu => "CPU time (`--cpus`)",
            Controller::Devices => "devices (to the standard ones)",
        }
    }

    fn warned(self) -> &'static AtomicBool {
        static WARNED: [AtomicBool; 4] = [
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
        ];
        &WARNED[self as usize]
    }
}

/// A cgroup hierarchy mounted on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hierarchy {
    mount: PathBuf,
    v2: bool,
    /// v1: the controllers bound to it (`memory`, `cpu,cpuacct`...); v2: those it offers.
    controllers: Vec<String>,
}

/// The cgroup hierarchies in `/proc/self/mountinfo` text; `v2_controllers` reads a v2 mount's
/// `cgroup.controllers`.
fn hierarchies(mountinfo: &str, v2_controllers: impl Fn(&Path) -> String) -> Vec<Hierarchy> {
    let mut found: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let (Some(root), Some(mount)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        // A bind of a subtree (a container's view) or an escaped path: not a hierarchy root.
        if *root != "/" || mount.contains('\\') {
            continue;
        }
        let mut right = right.split(' ');
        let (Some(fstype), Some(_source), Some(opts)) = (right.next(), right.next(), right.next())
        else {
            continue;
        };
        let mount = PathBuf::from(mount);
        let h = match fstype {
            "cgroup2" => Hierarchy {
                controllers: v2_controllers(&mount)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
                mount,
                v2: true,
            },
            "cgroup" => Hierarchy {
                controllers: opts.split(',').map(str::to_string).collect(),
                mount,
                v2: false,
            },
            _ => continue,
        };
        if !found
            .iter()
            .any(|f| f.v2 == h.v2 && f.controllers == h.controllers)
        {
            found.push(h);
        }
    }
    found
}

/// Where `controller` lives: the v2 hierarchy when it offers it, else its v1 hierarchy.
fn hierarchy_of(controller: Controller, all: &[Hierarchy]) -> Option<&Hierarchy> {
    let has = |h: &&Hierarchy| h.controllers.iter().any(|c| c == controller.name());
    all.iter()
        .filter(|h| h.v2)
        .find(has)
        .or_else(|| all.iter().filter(|h| !h.v2).find(has))
}

/// The files (and values, in order) that set `resources` for `controller`.
fn limit_files(
    controller: Controller,
    v2: bool,
    resources: &LinuxResources,
) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    match controller {
        Controller::Memory => {
            let Some(mem) = resources.memory() else {
                return files;
            };
            let Some(limit) = mem.limit().filter(|l| *l > 0) else {
                return files;
            };
            let swap = mem.swap().filter(|s| *s >= limit);
            if v2 {
                files.push(("memory.max", limit.to_string()));
                if let Some(swap) = swap {
                    files.push(("memory.swap.max", (swap - limit).to_string()));
                }
            } else {
                // memsw may never be below the memory limit: the memory limit first.
                files.push(("memory.limit_in_bytes", limit.to_string()));
                if let Some(swap) = swap {
                    files.push(("memory.memsw.limit_in_bytes", swap.to_string()));
                }
            }
        }
        Controller::Pids => {
            if let Some(pids) = resources.pids() {
                let value = if pids.limit() > 0 {
                    pids.limit().to_string()
                } else {
                    "max".to_string()
                };
                files.push(("pids.max", value));
            }
        }
        // Deny everything first, so that a cgroup made below this one (runc's) can only
        // narrow the list: a v1 child may allow nothing its parent denies.
        Controller::Devices if !v2 => {
            files.push(("devices.deny", "a".to_string()));
            for rule in ALLOWED_DEVICES {
                files.push(("devices.allow", rule.to_string()));
            }
        }
        Controller::Devices => {}
        Controller::Cpu => {
            let Some(cpu) = resources.cpu() else {
                return files;
            };
            let Some(quota) = cpu.quota().filter(|q| *q > 0) else {
                return files;
            };
            let period = cpu.period().unwrap_or(CPU_PERIOD_US);
            if v2 {
                files.push(("cpu.max", format!("{quota} {period}")));
            } else {
                files.push(("cpu.cfs_period_us", period.to_string()));
                files.push(("cpu.cfs_quota_us", quota.to_string()));
            }
        }
    }
    files
}

/// Whether `resources` asks anything of `controller`. A pids limit of "none" still needs its
/// cgroup: it is where the run's processes are found and killed afterwards.
fn needs(controller: Controller, resources: &LinuxResources) -> bool {
    match controller {
        Controller::Memory | Controller::Cpu => {
            !limit_files(controller, false, resources).is_empty()
        }
        Controller::Pids => resources.pids().is_some(),
        Controller::Devices => true,
    }
}

/// One directory of a [`Cgroup`].
#[derive(Debug)]
struct Dir {
    path: PathBuf,
    v2: bool,
}

/// A sandbox's own cgroup, in one directory per hierarchy used. Dropping it kills what is left
/// in it and removes it.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dirs: Vec<Dir>,
    /// The memory controller's directory and the limit, to tell an out-of-memory kill.
    memory: Option<(PathBuf, bool, u64)>,
    /// The pids controller's directory and the limit, to tell a run that hit it.
    pids: Option<(PathBuf, u64)>,
    /// The controllers whose limits are set.
    limited: Vec<Controller>,
}

fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    // One write call: cgroup files take a value per write.
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// Say once per process that `controller`'s limit is not applied. Not for the default pids
/// limit alone: a rootless kiln without delegated cgroups would say it on every command, about
/// a limit nobody asked for.
fn warn_once(controller: Controller, resources: &LinuxResources, why: &str) {
    let default_only = controller == Controller::Pids
        && resources
            .pids()
            .as_ref()
            .is_none_or(|p| p.limit() == DEFAULT_PIDS_LIMIT);
    if default_only {
        return;
    }
    if !controller.warned().swap(true, Ordering::Relaxed) {
        eprintln!(
            "warning: kiln cannot limit the {} of its sandboxes here: {why}; they run without that limit",
            controller.what()
        );
    }
}

impl Cgroup {
    /// The cgroup for `spec`'s `linux.resources`, set up with its limits; `None` when the spec
    /// sets none or no controller could be used (each one that could not is warned about once).
    /// `runtime_cgroup`: the run's OCI runtime makes its own cgroup below this one (runc).
    pub(crate) fn create(spec: &Spec, runtime_cgroup: bool) -> Option<Cgroup> {
        let no_limits = LinuxResources::default();
        let resources = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .unwrap_or(&no_limits);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let all = hierarchies(&mountinfo, |m| {
            std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default()
        });
        let name = crate::spawn::unique_name();
        let mut cgroup = Cgroup {
            dirs: Vec::new(),
            memory: None,
            pids: None,
            limited: Vec::new(),
        };
        // Rootless, the devices controller is never delegated, and needs no cgroup: a user
        // namespace can neither make a device node nor open one from a mount it made
        // (`SB_I_NODEV`).
        let devices = !crate::rootless::in_user_namespace();
        for controller in [
            Controller::Pids,
            Controller::Memory,
            Controller::Cpu,
            Controller::Devices,
        ] {
            if !needs(controller, resources) || (controller == Controller::Devices && !devices) {
                continue;
            }
            let Some(h) = hierarchy_of(controller, &all).filter(|h| {
                // v2 has no devices file to write (see `Controller::Devices`).
                !(controller == Controller::Devices && h.v2)
            }) else {
                if controller == Controller::Devices {
                    continue;
                }
                warn_once(
                    controller,
                    resources,
                    "no cgroup hierarchy on this host has that controller",
                );
                continue;
            };
            let dir = match cgroup.dirs.iter().find(|d| d.path.starts_with(&h.mount)) {
                Some(d) => d.path.clone(),
                None => match make_dir(h, controller, &name) {
                    Ok(path) => {
                        cgroup.dirs.push(Dir {
                            path: path.clone(),
                            v2: h.v2,
                        });
                        path
                    }
                    Err(why) => {
                        warn_once(controller, resources, &why);
                        continue;
                    }
                },
            };
            let mut set = true;
            let mut files = limit_files(controller, h.v2, resources);
            if controller == Controller::Devices && runtime_cgroup && !files.is_empty() {
                files
                    .extend(RUNTIME_CGROUP_DEVICES.map(|rule| ("devices.allow", rule.to_string())));
            }
            for (file, value) in files {
                let path = dir.join(file);
                match write_file(&path, &value) {
                    Ok(()) => {}
                    // No swap accounting (v1 without `swapaccount`) or no swap (v2): the
                    // memory limit alone is then all the step can use.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.contains("sw") => {
                        continue
                    }
                    Err(e) => {
                        warn_once(
                            controller,
                            resources,
                            &format!("cannot write `{value}` to `{}`: {e}", path.display()),
                        );
                        set = false;
                        // Half a list (everything denied, not all of the standard devices
                        // allowed) would break the run, not protect it: all or nothing.
                        if controller == Controller::Devices {
                            let _ = write_file(&dir.join("devices.allow"), "a");
                        }
                        break;
                    }
                }
                if controller == Controller::Pids && file == "pids.max" {
                    if let Ok(limit) = value.parse() {
                        cgroup.pids = Some((dir.clone(), limit));
                    }
                }
                if controller == Controller::Memory && cgroup.memory.is_none() {
                    let limit = value.parse().unwrap_or(0);
                    cgroup.memory = Some((dir.clone(), h.v2, limit));
                }
            }
            if set {
                cgroup.limited.push(controller);
            }
        }
        if cgroup.dirs.is_empty() {
            return None;
        }
        Some(cgroup)
    }

    /// Whether only the standard devices open in the cgroup (a v1 device cgroup).
    pub(crate) fn restricts_devices(&self) -> bool {
        self.limited.contains(&Controller::Devices)
    }

    /// Drop from `spec` the limits `cgroup` could not set: an OCI runtime would fail where
    /// kiln could not (runc refuses a pids limit it cannot apply, rootless), and kiln has
    /// already said that the run goes without them.
    pub(crate) fn keep_enforceable(spec: &mut Spec, cgroup: Option<&Cgroup>) {
        let Some(mut linux) = spec.linux().clone() else {
            return;
        };
        let Some(mut r) = linux.resources().clone() else {
            return;
        };
        let has = |c| cgroup.is_some_and(|cg| cg.limited.contains(&c));
        if !has(Controller::Memory) {
            r.set_memory(None);
        }
        if !has(Controller::Cpu) {
            r.set_cpu(None);
        }
        if !has(Controller::Pids) {
            r.set_pids(None);
        }
        linux.set_resources(Some(r));
        spec.set_linux(Some(linux));
    }

    /// The `cgroup.procs` files a process writes `0` to to join every directory.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect()
    }

    /// Move process `pid` (and so all it forks from then on) into the cgroup; whether it
    /// worked (when not, kiln says once that runs go without limits).
    pub(crate) fn add(&self, pid: u32) -> bool {
        static WARNED: AtomicBool = AtomicBool::new(false);
        for file in self.procs_files() {
            if let Err(e) = write_file(&file, &pid.to_string()) {
                if !WARNED.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "warning: kiln cannot move its sandboxes into their cgroup (`{}`: {e}); they run without resource limits",
                        file.display()
                    );
                }
                return false;
            }
        }
        true
    }

    /// Make `cmd`'s process join the cgroup before it execs (for an OCI runtime, which starts
    /// the container at once: there is no later moment that is early enough).
    pub(crate) fn join_before_exec(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // Allocated before fork: the hook runs in the child of a multi-threaded process.
        let files: Vec<std::ffi::CString> = self
            .procs_files()
            .into_iter()
            .filter_map(|p| std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).ok())
            .collect();
        // SAFETY: the hook runs in the forked child before exec and makes only raw syscalls
        // (open, write, close) on C strings allocated before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for file in &files {
                    let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if written != 1 {
                        return Err(err);
                    }
                }
                Ok(())
            });
        }
    }

    /// The pids limit when a fork or clone of the run failed for reaching it (`pids.events`'
    /// `max` counter, in v1 and v2 alike).
    pub(crate) fn pids_limit_reached(&self) -> Option<u64> {
        let (dir, limit) = self.pids.as_ref()?;
        let text = std::fs::read_to_string(dir.join("pids.events")).ok()?;
        (counter(&text, "max").unwrap_or(0) > 0).then_some(*limit)
    }

    /// The memory limit when the kernel killed a process of the cgroup for reaching it.
    /// `exit_code` is the run's: a run killed by SIGKILL (137) whose memory peaked at the limit
    /// was killed for memory too, although the kill was counted elsewhere (runc moves the
    /// container into a cgroup of its own below this one, and removes it when it ends; v1
    /// counts a kill in the victim's cgroup only).
    pub(crate) fn out_of_memory(&self, exit_code: i32) -> Option<u64> {
        let (dir, v2, limit) = self.memory.as_ref()?;
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let events = if *v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        if read(events)
            .and_then(|t| counter(&t, "oom_kill"))
            .unwrap_or(0)
            > 0
        {
            return Some(*limit);
        }
        let peak_files: &[&str] = if *v2 {
            &["memory.peak"]
        } else {
            &[
                "memory.memsw.max_usage_in_bytes",
                "memory.max_usage_in_bytes",
            ]
        };
        let peak = peak_files
            .iter()
            .filter_map(|f| read(f).and_then(|t| t.trim().parse::<u64>().ok()))
            .max()?;
        (exit_code == 128 + libc::SIGKILL && at_limit(peak, *limit)).then_some(*limit)
    }
}

/// Whether a peak usage of `peak` bytes reached `limit`: within 1/64 of it (the kernel charges
/// in pages and batches, and reclaims before it kills).
fn at_limit(peak: u64, limit: u64) -> bool {
    peak >= limit - limit / 64
}

/// The value of `key` in a flat-keyed cgroup file (`oom_kill 1`).
fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Create `kiln/<name>` in hierarchy `h` (on v2 with `controller` enabled for it).
fn make_dir(h: &Hierarchy, controller: Controller, name: &str) -> Result<PathBuf, String> {
    let parent = h.mount.join("kiln");
    let fail = |what: &str, path: &Path, e: std::io::Error| {
        format!("cannot {what} `{}`: {e}", path.display())
    };
    std::fs::create_dir_all(&parent).map_err(|e| fail("create", &parent, e))?;
    remove_stale(&parent);
    if h.v2 {
        // Every v2 controller kiln may use is enabled at once, so that a later run needing
        // another finds the parent ready: a v2 cgroup with members cannot enable more.
        for dir in [&h.mount, &parent] {
            let control = dir.join("cgroup.subtree_control");
            for c in [Controller::Memory, Controller::Pids, Controller::Cpu] {
                if h.controllers.iter().any(|o| o == c.name()) {
                    let enabled = write_file(&control, &format!("+{}", c.name()));
                    if let (Err(e), true) = (enabled, c == controller) {
                        return Err(fail("enable the controller in", &control, e));
                    }
                }
            }
        }
    }
    let dir = parent.join(name);
    std::fs::create_dir(&dir).map_err(|e| fail("create", &dir, e))?;
    Ok(dir)
}

/// Remove the empty cgroups a kiln killed outright (`kill -9`) left in `parent`: those named
/// after a process that is gone. One still in use cannot be removed, so at worst this fails.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// Kill every process in `dir` and remove it; whether it is gone.
fn kill_and_remove(dir: &Dir) -> bool {
    let kill_file = dir.path.join("cgroup.kill");
    for _ in 0..50 {
        match std::fs::remove_dir(&dir.path) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) => {}
        }
        if !(dir.v2 && write_file(&kill_file, "1").is_ok()) {
            let procs = std::fs::read_to_string(dir.path.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let left: Vec<Dir> = std::mem::take(&mut self.dirs)
            .into_iter()
            .filter(|d| !kill_and_remove(d))
            .collect();
        if left.is_empty() {
            return;
        }
        // A process still exiting (a large one unmapping its memory) keeps its cgroup busy for
        // a while: finish in the background instead of holding up the caller.
        let _ = std::thread::Builder::new()
            .name("kiln-cgroup-rm".into())
            .spawn(move || {
                for _ in 0..100 {
                    if left.iter().all(kill_and_remove) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mib(n: u64) -> u64 {
        n << 20
    }

    #[test]
    fn shm_size_is_a_size_above_zero() {
        assert_eq!(parse_shm_size("128m").unwrap(), 128 << 20);
        assert!(parse_shm_size("0").is_err());
    }

    #[test]
    fn sizes_parse_as_docker_parses_them() {
        let ok = |s: &str| parse_size("--memory", s).unwrap();
        assert_eq!(ok("1073741824"), 1 << 30);
        assert_eq!(ok("512m"), mib(512));
        assert_eq!(ok("512M"), mib(512));
        assert_eq!(ok("512mb"), mib(512));
        assert_eq!(ok("512MiB"), mib(512));
        assert_eq!(ok("1g"), 1 << 30);
        assert_eq!(ok("64k"), 64 << 10);
        assert_eq!(ok("100b"), 100);
        assert_eq!(ok("1.5g"), mib(1536));
        assert_eq!(ok("0.5m"), 512 << 10);
        assert_eq!(ok("2 g"), 2 << 30);
        for bad in [
            "",
            "m",
            "12x",
            "-1m",
            "1.2.3g",
            ".5g",
            "1e3",
            "1 gigabyte",
            "99999999999p",
        ] {
            let err = parse_size("--memory", bad).unwrap_err().to_string();
            assert!(
                err.contains("`--memory`") && err.contains(&format!("`{bad}`")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn limits_name_the_flag_of_a_bad_value() {
        let err = |m: Option<&str>, c: Option<&str>, p: Option<&str>| {
            Limits::parse(m, c, p).unwrap_err().to_string()
        };
        assert!(err(Some("4m"), None, None).contains("smallest memory limit is 6 MiB"));
        assert!(err(None, Some("half"), None).contains("`--cpus`"));
        assert!(err(None, Some("0.001"), None).contains("at least `0.01`"));
        assert!(err(None, Some("-1"), None).contains("at least `0.01`"));
        assert!(err(None, Some("100000"), None).contains("this host has only"));
        assert!(err(None, None, Some("lots")).contains("`--pids-limit`"));
        assert!(err(None, None, Some("-5")).contains("`-1` for no limit"));
        // 0 is no limit for each, as with Docker.
        let none = Limits::parse(Some("0"), Some("0"), Some("0")).unwrap();
        assert_eq!(
            (none.memory, none.nano_cpus, none.pids),
            (None, None, Some(-1))
        );
        let l = Limits::parse(Some("64m"), Some("0.5"), Some("0")).unwrap();
        assert_eq!(
            l,
            Limits {
                memory: Some(mib(64)),
                nano_cpus: Some(500_000_000),
                pids: Some(-1),
                ..Limits::default()
            }
        );
    }

    #[test]
    fn sizes_print_in_their_unit() {
        assert_eq!(format_size(mib(512)), "512 MiB");
        assert_eq!(format_size(1 << 30), "1 GiB");
        assert_eq!(format_size(mib(1536)), "1536 MiB");
        assert_eq!(format_size(64 << 10), "64 KiB");
        assert_eq!(format_size(100), "100 bytes");
        assert_eq!(format_size(mib(6) + 1), "6.0 MiB");
    }

    fn resources(l: Limits) -> LinuxResources {
        l.resources().unwrap()
    }

    #[test]
    fn cgroup_files_get_docker_values() {
        let r = resources(Limits {
            memory: Some(mib(512)),
            nano_cpus: Some(500_000_000),
            pids: Some(200),
            ..Limits::default()
        });
        assert_eq!(
            limit_files(Controller::Memory, false, &r),
            vec![
                ("memory.limit_in_bytes", "536870912".to_string()),
                ("memory.memsw.limit_in_bytes", "536870912".to_string()),
            ]
        );
        assert_eq!(
            limit_files(Controller::Memory, true, &r),
            vec![
                ("memory.max", "536870912".to_string()),
                ("memory.swap.max", "0".to_string()),
            ]
        );
        assert_eq!(
            limit_files(Controller::Cpu, false, &r),
            vec![
                ("cpu.cfs_period_us", "100000".to_string()),
                ("cpu.cfs_quota_us", "50000".to_string()),
            ]
        );
        assert_eq!(
            limit_files(Controller::Cpu, true, &r),
            vec![("cpu.max", "50000 100000".to_string())]
        );
        assert_eq!(
            limit_files(Controller::Pids, true, &r),
            vec![("pids.max", "200".to_string())]
        );
    }

    #[test]
    fn without_flags_only_the_default_pids_limit_is_set() {
        let r = resources(Limits::default());
        assert!(needs(Controller::Pids, &r));
        assert!(!needs(Controller::Memory, &r));
        assert!(!needs(Controller::Cpu, &r));
        assert_eq!(
            limit_files(Controller::Pids, false, &r),
            vec![("pids.max", "16384".to_string())]
        );
        let unlimited = resources(Limits {
            pids: Some(-1),
            ..Limits::default()
        });
        assert_eq!(
            limit_files(Controller::Pids, false, &unlimited),
            vec![("pids.max", "max".to_string())]
        );
    }

    #[test]
    fn apply_to_writes_linux_resources() {
        let mut spec = Spec::default();
        Limits {
            memory: Some(mib(64)),
            ..Limits::default()
        }
        .apply_to(&mut spec)
        .unwrap();
        let r = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(mib(64) as i64));
        assert_eq!(r.pids().as_ref().unwrap().limit(), DEFAULT_PIDS_LIMIT);
    }

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
30 26 0:28 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,memory
31 26 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
32 26 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
33 26 0:30 /sub /mnt/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
";

    #[test]
    fn hybrid_hosts_use_v1_unless_v2_offers_the_controller() {
        let all = hierarchies(HYBRID, |_| "hugetlb\n".to_string());
        assert_eq!(all.len(), 4, "{all:?}");
        let mount = |c| hierarchy_of(c, &all).map(|h| (h.mount.clone(), h.v2));
        assert_eq!(
            mount(Controller::Memory),
            Some((PathBuf::from("/sys/fs/cgroup/memory"), false))
        );
        assert_eq!(
            mount(Controller::Cpu),
            Some((PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"), false))
        );
        assert_eq!(mount(Controller::Pids).map(|m| m.1), Some(false));
        // A v2 hierarchy that offers the controller wins over the v1 one.
        let v2_too = hierarchies(HYBRID, |_| "cpu memory pids\n".to_string());
        assert_eq!(
            hierarchy_of(Controller::Pids, &v2_too).map(|h| (h.mount.clone(), h.v2)),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), true))
        );
    }

    #[test]
    fn unified_hosts_use_v2() {
        let mountinfo = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        let all = hierarchies(mountinfo, |m| {
            assert_eq!(m, Path::new("/sys/fs/cgroup"));
            "cpuset cpu io memory pids\n".to_string()
        });
        for c in [Controller::Memory, Controller::Pids, Controller::Cpu] {
            let h = hierarchy_of(c, &all).unwrap();
            assert!(h.v2 && h.mount == Path::new("/sys/fs/cgroup"), "{h:?}");
        }
        // Without the controller delegated there is nowhere to put the limit.
        let none = hierarchies(mountinfo, |_| String::new());
        assert_eq!(hierarchy_of(Controller::Memory, &none), None);
    }

    #[test]
    fn an_oci_runtime_gets_only_the_limits_kiln_could_set() {
        let mut spec = Spec::default();
        Limits {
            memory: Some(mib(64)),
            nano_cpus: Some(1_000_000_000),
            pids: Some(100),
            ..Limits::default()
        }
        .apply_to(&mut spec)
        .unwrap();
        let limited = Cgroup {
            dirs: Vec::new(),
            memory: None,
            pids: None,
            limited: vec![Controller::Memory],
        };
        let mut kept = spec.clone();
        Cgroup::keep_enforceable(&mut kept, Some(&limited));
        let r = kept.linux().as_ref().unwrap().resources().clone().unwrap();
        assert!(r.memory().is_some() && r.cpu().is_none() && r.pids().is_none());
        Cgroup::keep_enforceable(&mut spec, None);
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        assert!(r.memory().is_none() && r.cpu().is_none() && r.pids().is_none());
    }

    #[test]
    fn the_device_cgroup_denies_all_but_dockers_list() {
        let r = resources(Limits::default());
        assert!(needs(Controller::Devices, &r));
        let files = limit_files(Controller::Devices, false, &r);
        // Everything denied before anything is allowed, and only the writes of the list.
        assert_eq!(files[0], ("devices.deny", "a".to_string()));
        let allowed: Vec<&str> = files[1..]
            .iter()
            .map(|(f, v)| {
                assert_eq!(*f, "devices.allow");
                v.as_str()
            })
            .collect();
        for rule in [
            "c *:* m",
            "b *:* m",
            "c 1:3 rwm",
            "c 1:9 rwm",
            "c 5:2 rwm",
            "c 136:* rwm",
        ] {
            assert!(allowed.contains(&rule), "{rule}: {allowed:?}");
        }
        assert!(
            allowed
                .iter()
                .all(|r| !r.starts_with('b') || r.ends_with(" m")),
            "no block device opens: {allowed:?}"
        );
        assert!(!allowed.contains(&"c 1:11 rwm") && !allowed.contains(&"a"));
        // v2 filters devices with eBPF: no file to write there, and no v2 hierarchy offers it.
        assert!(limit_files(Controller::Devices, true, &r).is_empty());
        let all = hierarchies(HYBRID, |_| "hugetlb memory pids\n".to_string());
        assert_eq!(hierarchy_of(Controller::Devices, &all), None);
        let with_devices = format!(
            "{HYBRID}34 26 0:31 / /sys/fs/cgroup/devices rw,relatime shared:16 - cgroup cgroup rw,devices\n"
        );
        let all = hierarchies(&with_devices, |_| "hugetlb\n".to_string());
        assert_eq!(
            hierarchy_of(Controller::Devices, &all).map(|h| (h.mount.clone(), h.v2)),
            Some((PathBuf::from("/sys/fs/cgroup/devices"), false))
        );
    }

    #[test]
    fn oom_counters_are_read_by_key() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(counter(v1, "oom_kill"), Some(2));
        let v2 = "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(counter(v2, "oom_kill"), Some(1));
        assert_eq!(counter("oom_kill_disable 0\n", "oom_kill"), None);
        assert!(at_limit(64 << 20, 64 << 20));
        assert!(!at_limit(32 << 20, 64 << 20));
    }
}
