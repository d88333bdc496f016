//! End-to-end tests of the sandbox: real namespaces and overlayfs over a busybox root (needs root).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use kiln_exec::{
    default_spec, resolve_user, run, ExecError, Network, OutputSink, OutputStream, ProcessSpec,
    RootFs, RunOutcome, SandboxConfig, Stdio,
};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\nwheel:x:10:app\napp:x:1000:\n";

struct Fixture {
    _dir: tempfile::TempDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    target: PathBuf,
    state: PathBuf,
}

fn busybox() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    assert!(
        p.exists(),
        "these tests need a static busybox: apt-get install -y busybox-static"
    );
    p
}

/// A root with busybox and its applets, /etc/passwd and /etc/group, /tmp and /home/app, and
/// deliberately no /proc, /dev or /sys.
fn fixture() -> Fixture {
    static EXE: Once = Once::new();
    EXE.call_once(|| {
        std::env::set_var("KILN_SANDBOX_EXE", env!("CARGO_BIN_EXE_kiln-sandbox-test"))
    });
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    for d in ["bin", "etc", "tmp", "home/app", "root"] {
        std::fs::create_dir_all(lower.join(d)).unwrap();
    }
    std::fs::copy(busybox(), lower.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(busybox())
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", lower.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(lower.join("etc/passwd"), PASSWD).unwrap();
    std::fs::write(lower.join("etc/group"), GROUP).unwrap();
    std::os::unix::fs::chown(lower.join("home/app"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(
        lower.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let mk = |n: &str| {
        let p = dir.path().join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    Fixture {
        upper: mk("upper"),
        work: mk("work"),
        target: mk("target"),
        state: mk("state"),
        lower,
        _dir: dir,
    }
}

fn process(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        cwd: "/".into(),
        user: resolve_user("root", Some(PASSWD), Some(GROUP)).unwrap(),
        hostname: "kilnbox".into(),
        network: Network::None,
        terminal: false,
    }
}

fn config(f: &Fixture, p: &ProcessSpec) -> SandboxConfig {
    SandboxConfig {
        spec: default_spec(p).unwrap(),
        rootfs: RootFs {
            lower: vec![f.lower.clone()],
            upper: Some(f.upper.clone()),
            work: Some(f.work.clone()),
            target: f.target.clone(),
        },
        network: p.network,
        stdio: Stdio::Piped,
        state_dir: f.state.clone(),
        runtime: kiln_exec::Runtime::Builtin,
    }
}

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<(Vec<u8>, Vec<u8>)>>);

impl OutputSink for Collect {
    fn output(&mut self, stream: OutputStream, data: &[u8]) {
        let mut g = self.0.lock().unwrap();
        match stream {
            OutputStream::Stdout => g.0.extend_from_slice(data),
            OutputStream::Stderr => g.1.extend_from_slice(data),
        }
    }
}

struct Ran {
    outcome: RunOutcome,
    stdout: String,
    stderr: String,
}

async fn capture(config: SandboxConfig) -> Result<Ran, ExecError> {
    let sink = Collect::default();
    let outcome = run(config, Some(Box::new(sink.clone()))).await?;
    let g = sink.0.lock().unwrap();
    Ok(Ran {
        outcome,
        stdout: String::from_utf8_lossy(&g.0).into_owned(),
        stderr: String::from_utf8_lossy(&g.1).into_owned(),
    })
}

async fn sh(f: &Fixture, script: &str) -> Ran {
    capture(config(f, &process(&["sh", "-c", script])))
        .await
        .unwrap()
}

/// Pids of host processes whose command line is exactly `args`.
fn processes_running(args: &[&str]) -> Vec<u32> {
    let want = args.join("\0") + "\0";
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if cmdline == want.as_bytes() {
                found.push(pid);
            }
        }
    }
    found
}

async fn wait_gone(args: &[&str]) -> Vec<u32> {
    for _ in 0..50 {
        if processes_running(args).is_empty() {
            return vec![];
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    processes_running(args)
}

#[tokio::test]
async fn captures_output_and_exit_code() {
    let f = fixture();
    let r = sh(&f, "echo out; echo err >&2; exit 3").await;
    assert_eq!(r.outcome.exit_code, 3);
    assert_eq!(r.stdout, "out\n");
    assert_eq!(r.stderr, "err\n");
    let r = sh(&f, "kill -9 $$").await;
    assert_eq!(r.outcome.exit_code, 128 + 9);
}

#[tokio::test]
async fn applies_env_cwd_and_user() {
    let f = fixture();
    let mut p = process(&[
        "sh",
        "-c",
        "id -u; id -g; id -G; echo $FOO; pwd; echo $HOME; echo $PATH",
    ]);
    p.env = vec!["FOO=bar baz".into()];
    p.cwd = "/home/app".into();
    p.user = resolve_user("app", Some(PASSWD), Some(GROUP)).unwrap();
    let r = capture(config(&f, &p)).await.unwrap();
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "1000",
            "1000",
            "1000 10",
            "bar baz",
            "/home/app",
            "/home/app",
            kiln_exec::DEFAULT_PATH
        ]
    );
}

#[tokio::test]
async fn non_root_has_no_capabilities_and_root_has_dockers() {
    let f = fixture();
    let r = sh(&f, "grep -E '^Cap(Eff|Bnd)' /proc/self/status").await;
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("CapBnd:\t00000000a80425fb"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("CapEff:\t00000000a80425fb"),
        "{}",
        r.stdout
    );
    let mut p = process(&["sh", "-c", "grep -E '^CapEff' /proc/self/status"]);
    p.user = resolve_user("1000", Some(PASSWD), Some(GROUP)).unwrap();
    let r = capture(config(&f, &p)).await.unwrap();
    assert_eq!(r.stdout, "CapEff:\t0000000000000000\n");
}

#[tokio::test]
async fn hostname_is_isolated() {
    use oci_spec::runtime::Capability;
    let f = fixture();
    let before = nix::unistd::gethostname().unwrap();
    // Docker's capability set cannot change the hostname...
    let r = sh(&f, "hostname; hostname changed-inside").await;
    assert_eq!(r.stdout, "kilnbox\n");
    assert_ne!(r.outcome.exit_code, 0);
    // ...with CAP_SYS_ADMIN it can, and only inside.
    let mut c = config(
        &f,
        &process(&["sh", "-c", "hostname changed-inside && hostname"]),
    );
    let mut process = c.spec.process().clone().unwrap();
    let mut caps = process.capabilities().clone().unwrap();
    for set in [caps.bounding(), caps.effective(), caps.permitted()] {
        assert!(!set.as_ref().unwrap().contains(&Capability::SysAdmin));
    }
    let mut with_admin = caps.bounding().clone().unwrap();
    with_admin.insert(Capability::SysAdmin);
    caps.set_bounding(Some(with_admin.clone()));
    caps.set_effective(Some(with_admin.clone()));
    caps.set_permitted(Some(with_admin.clone()));
    process.set_capabilities(Some(caps));
    c.spec.set_process(Some(process));
    // As `docker run --cap-add`, the seccomp profile follows the capabilities.
    let mut linux = c.spec.linux().clone().unwrap();
    linux.set_seccomp(Some(kiln_exec::default_seccomp(&with_admin).unwrap()));
    c.spec.set_linux(Some(linux));
    let r = capture(c).await.unwrap();
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "changed-inside\n");
    assert_eq!(nix::unistd::gethostname().unwrap(), before);
}

#[tokio::test]
async fn pid_namespace_holds_only_the_sandbox() {
    let f = fixture();
    let r = sh(&f, "echo $$; ps -o pid,comm; true").await;
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("2"), "the command must not be pid 1");
    let rows: Vec<&str> = lines.skip(1).collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows[0].trim().starts_with("1 kiln-sandbox"), "{rows:?}");
    assert_eq!(rows[1].trim(), "2 sh", "{rows:?}");
    assert_eq!(rows[2].trim(), "3 ps", "{rows:?}");
}

#[tokio::test]
async fn proc_dev_sys_are_mounted_and_created_mountpoints_reported() {
    let f = fixture();
    let r = sh(
        &f,
        "test -r /proc/self/status && echo x > /dev/null && test -c /dev/zero && test -d /dev/pts \
         && test -d /dev/shm && test -L /dev/ptmx && test -d /sys/class && ls /dev/null",
    )
    .await;
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    let created: Vec<String> = r
        .outcome
        .created_mountpoints
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    // /dev/pts etc. live on the /dev tmpfs, not in the layer: not reported. The name files
    // (/etc/hosts...) are bind-mounted from the state dir over new empty files.
    assert_eq!(
        created,
        [
            "proc",
            "dev",
            "sys",
            "etc/hosts",
            "etc/resolv.conf",
            "etc/hostname"
        ]
    );
    // All removed again, with `etc/`, which the fixture has and which was copied up only for
    // the stubs. `/dev`, `/proc` and `/sys` stay, empty and 0755, as runc leaves them (and
    // BuildKit's layers show them: the run-on-bare-rootfs differential case).
    let mut left: Vec<(String, u32, usize)> = std::fs::read_dir(&f.upper)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().mode() & 0o7777;
            let entries = std::fs::read_dir(e.path()).map_or(usize::MAX, |d| d.count());
            (e.file_name().to_string_lossy().into_owned(), mode, entries)
        })
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            ("dev".to_string(), 0o755, 0),
            ("proc".to_string(), 0o755, 0),
            ("sys".to_string(), 0o755, 0)
        ],
        "mount stubs left in the layer"
    );
    // Masked and read-only paths.
    let r = sh(
        &f,
        "cat /proc/kcore | wc -c; echo 1 > /proc/sys/kernel/domainname",
    )
    .await;
    assert_eq!(r.stdout.trim(), "0");
    assert_ne!(r.outcome.exit_code, 0);
}

#[tokio::test]
async fn writes_land_in_upper_and_lower_is_untouched() {
    let f = fixture();
    let r = sh(
        &f,
        "echo data > /tmp/new && rm /etc/group && echo changed > /etc/passwd && mkdir /made",
    )
    .await;
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(f.upper.join("tmp/new")).unwrap(),
        "data\n"
    );
    assert_eq!(
        std::fs::read_to_string(f.upper.join("etc/passwd")).unwrap(),
        "changed\n"
    );
    let whiteout = std::fs::symlink_metadata(f.upper.join("etc/group")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert!(f.upper.join("made").is_dir());
    assert!(!f.lower.join("tmp/new").exists());
    assert!(!f.lower.join("made").exists());
    assert_eq!(
        std::fs::read_to_string(f.lower.join("etc/passwd")).unwrap(),
        PASSWD
    );
    assert_eq!(
        std::fs::read_to_string(f.lower.join("etc/group")).unwrap(),
        GROUP
    );
    assert!(!f.lower.join("proc").exists());
}

#[tokio::test]
async fn layers_stack_top_first() {
    let f = fixture();
    let top = f._dir.path().join("top");
    std::fs::create_dir_all(top.join("etc")).unwrap();
    std::fs::write(top.join("etc/motd"), "from top\n").unwrap();
    std::fs::write(top.join("etc/passwd"), "overridden\n").unwrap();
    let mut c = config(&f, &process(&["cat", "/etc/motd", "/etc/passwd"]));
    c.rootfs.lower = vec![top, f.lower.clone()];
    let r = capture(c).await.unwrap();
    assert_eq!(r.stdout, "from top\noverridden\n", "{}", r.stderr);
}

#[tokio::test]
async fn read_only_root_without_upper() {
    let f = fixture();
    let mut c = config(&f, &process(&["sh", "-c", "touch /tmp/x"]));
    c.rootfs.upper = None;
    c.rootfs.work = None;
    let r = capture(c).await.unwrap();
    assert_ne!(r.outcome.exit_code, 0);
    assert!(r.stderr.contains("Read-only"), "{}", r.stderr);
    assert!(!f.lower.join("tmp/x").exists());
    assert!(!f.lower.join("proc").exists());
    assert!(r.outcome.created_mountpoints.is_empty());
    assert!(!f.state.join("scratch").exists());
}

#[tokio::test]
async fn network_none_has_only_loopback_up() {
    let f = fixture();
    let r = sh(&f, "ls /sys/class/net; cat /sys/class/net/lo/flags").await;
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[0], "lo");
    let flags = u32::from_str_radix(lines[1].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is not up: {}", lines[1]);
    assert_eq!(lines.len(), 2);

    let mut p = process(&["ls", "/sys/class/net"]);
    p.network = Network::Host;
    let r = capture(config(&f, &p)).await.unwrap();
    let host: Vec<_> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(r.stdout.lines().count(), host.len(), "{}", r.stdout);
}

#[tokio::test]
async fn no_process_survives_the_command() {
    let f = fixture();
    let started = Instant::now();
    let r = sh(&f, "sleep 1234 & sleep 1234 & echo started").await;
    assert_eq!(r.stdout, "started\n");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(wait_gone(&["sleep", "1234"]).await, Vec::<u32>::new());
}

#[tokio::test]
async fn cancelling_the_future_kills_the_sandbox() {
    let f = fixture();
    let c = config(&f, &process(&["sleep", "4321"]));
    let fut = run(c, None);
    let timed = tokio::time::timeout(Duration::from_millis(300), fut).await;
    assert!(timed.is_err(), "sleep finished early");
    assert_eq!(wait_gone(&["sleep", "4321"]).await, Vec::<u32>::new());
}

#[tokio::test]
async fn missing_command_exits_127_with_a_clear_message() {
    let f = fixture();
    let r = capture(config(&f, &process(&["nosuchcmd", "x"])))
        .await
        .unwrap();
    assert_eq!(r.outcome.exit_code, 127);
    assert!(
        r.stderr
            .contains("cannot run \"nosuchcmd\": not found in PATH"),
        "{}",
        r.stderr
    );
    let r = capture(config(&f, &process(&["/etc/passwd"])))
        .await
        .unwrap();
    assert_eq!(r.outcome.exit_code, 126, "{}", r.stderr);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
}

#[tokio::test]
async fn missing_cwd_is_a_setup_error() {
    let f = fixture();
    let mut p = process(&["true"]);
    p.cwd = "/nowhere".into();
    match capture(config(&f, &p)).await {
        Err(ExecError::Setup(msg)) => assert!(msg.contains("`/nowhere` does not exist"), "{msg}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(r) => panic!("ran with exit {}", r.outcome.exit_code),
    }
}

#[tokio::test]
async fn extra_bind_mounts() {
    let f = fixture();
    let data = f._dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello"), "hi\n").unwrap();
    let mut c = config(
        &f,
        &process(&["sh", "-c", "cat /mnt/data/hello; touch /mnt/data/x"]),
    );
    let mut mounts = c.spec.mounts().clone().unwrap();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/mnt/data")
            .typ("bind")
            .source(data.clone())
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap(),
    );
    c.spec.set_mounts(Some(mounts));
    let r = capture(c).await.unwrap();
    assert_eq!(r.stdout, "hi\n");
    assert_ne!(
        r.outcome.exit_code, 0,
        "write to a read-only bind succeeded"
    );
    assert!(!data.join("x").exists());
    let created: Vec<_> = r
        .outcome
        .created_mountpoints
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        created.ends_with(&["mnt".to_string(), "mnt/data".to_string()]),
        "{created:?}"
    );
}

#[tokio::test]
async fn mount_destinations_cannot_escape_through_symlinks() {
    let f = fixture();
    let host_dir = f._dir.path().join("host-side");
    std::fs::create_dir_all(&host_dir).unwrap();
    // An image symlink pointing at an absolute host path must resolve inside the root.
    std::os::unix::fs::symlink(&host_dir, f.lower.join("proc")).unwrap();
    let r = sh(&f, "test -r /proc/self/status").await;
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_dir(&host_dir).unwrap().count(), 0);
}

#[tokio::test]
async fn invalid_config_is_rejected_before_spawning() {
    let f = fixture();
    let mut c = config(&f, &process(&["true"]));
    c.rootfs.lower.clear();
    assert!(matches!(
        run(c, None).await,
        Err(ExecError::InvalidConfig(_))
    ));
    let mut c = config(&f, &process(&["true"]));
    c.rootfs.target = f._dir.path().join("missing");
    let e = run(c, None).await.unwrap_err();
    assert!(e.to_string().contains("rootfs.target"), "{e}");
}

#[tokio::test]
async fn inherit_and_null_stdio() {
    let f = fixture();
    let mut c = config(&f, &process(&["true"]));
    c.stdio = Stdio::Null;
    assert_eq!(run(c, None).await.unwrap().exit_code, 0);
    let mut c = config(&f, &process(&["sh", "-c", "exit 7"]));
    c.stdio = Stdio::Inherit;
    assert_eq!(run(c, None).await.unwrap().exit_code, 7);
}

/// Median wall time of a trivial `true` run; printed for the report (`--nocapture`).
#[tokio::test]
async fn startup_time_of_true() {
    let f = fixture();
    let mut times = Vec::new();
    for i in 0..20 {
        let upper = f._dir.path().join(format!("u{i}"));
        let work = f._dir.path().join(format!("w{i}"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let mut c = config(&f, &process(&["true"]));
        c.rootfs.upper = Some(upper);
        c.rootfs.work = Some(work);
        let t = Instant::now();
        let o = run(c, None).await.unwrap();
        times.push(t.elapsed());
        assert_eq!(o.exit_code, 0);
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "kiln-exec: `true` median over 20 runs: {median:?} (min {:?}, max {:?})",
        times[0], times[19]
    );
    assert!(median < Duration::from_secs(2), "{median:?}");
}

#[tokio::test]
async fn deep_layer_chains_and_odd_paths_use_the_new_mount_api() {
    let f = fixture();
    let base = f
        ._dir
        .path()
        .join("a-rather-long-directory-name-for-layers,with:odd chars");
    let mut lower = Vec::new();
    for i in 0..120 {
        let layer = base.join(format!("layer-number-{i:04}-padding-padding-padding"));
        std::fs::create_dir_all(layer.join("layers")).unwrap();
        std::fs::write(layer.join("layers").join(i.to_string()), format!("{i}\n")).unwrap();
        std::fs::write(layer.join("layers/top"), format!("{i}\n")).unwrap();
        lower.push(layer);
    }
    let options_len: usize = lower.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(options_len > 4096);
    lower.push(f.lower.clone());
    let mut c = config(
        &f,
        &process(&["sh", "-c", "ls /layers | wc -l; cat /layers/top"]),
    );
    c.rootfs.lower = lower;
    let r = capture(c).await.unwrap();
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "121\n0\n");
}

/// Host pid of the parent of `pid`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn sigterm_to_the_helper_reaches_the_command() {
    let f = fixture();
    let script = "trap 'echo got-term; exit 42' TERM; echo ready; sleep 5678 & wait";
    let c = config(&f, &process(&["sh", "-c", script]));
    let task = tokio::spawn(capture(c));
    let mut sleeper = Vec::new();
    for _ in 0..100 {
        sleeper = processes_running(&["sleep", "5678"]);
        if !sleeper.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sleeper.len(), 1, "sandboxed sleep not found");
    // sleep → sh → init → helper
    let helper = parent_of(parent_of(parent_of(sleeper[0])));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.stdout, "ready\ngot-term\n");
    assert_eq!(r.outcome.exit_code, 42);
    assert_eq!(wait_gone(&["sleep", "5678"]).await, Vec::<u32>::new());
}

#[tokio::test]
async fn sysctls_and_domainname_apply_inside_only() {
    let f = fixture();
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    let mut c = config(
        &f,
        &process(&[
            "cat",
            "/proc/sys/net/ipv4/ip_unprivileged_port_start",
            "/proc/sys/kernel/domainname",
        ]),
    );
    c.spec.set_domainname(Some("inside.test".into()));
    let r = capture(c).await.unwrap();
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "0\ninside.test\n");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap(),
        host
    );
    // A host-wide sysctl is refused before anything runs.
    let mut c = config(&f, &process(&["true"]));
    let linux = c.spec.linux_mut().as_mut().unwrap();
    linux.set_sysctl(Some(std::collections::HashMap::from([(
        "kernel.panic".to_string(),
        "5".to_string(),
    )])));
    match run(c, None).await {
        Err(ExecError::Setup(msg)) => assert!(msg.contains("`kernel.panic`"), "{msg}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
}

#[tokio::test]
async fn name_files_are_provided_and_writes_stay_out_of_the_layer() {
    let f = fixture();
    let r = sh(
        &f,
        "cat /etc/hostname; grep -c kilnbox /etc/hosts; test -s /etc/resolv.conf && echo resolv; \
         echo 10.1.2.3 extra >> /etc/hosts",
    )
    .await;
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "kilnbox\n1\nresolv\n");
    // The write went to the state dir's copy; the layer keeps nothing of it, not even `etc/`.
    assert!(!f.upper.join("etc").exists());
}

#[tokio::test]
async fn seccomp_refuses_new_user_namespaces_unless_unconfined() {
    let f = fixture();
    // unshare(CLONE_NEWUSER) needs no capability: only Docker's profile refuses it.
    let script = "unshare -U true 2>/dev/null; echo u=$?; grep Seccomp: /proc/self/status";
    let r = sh(&f, script).await;
    assert_eq!(r.outcome.exit_code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "u=1\nSeccomp:\t2\n");
    // The same step without the profile (Docker's `seccomp=unconfined`) may.
    let mut c = config(&f, &process(&["sh", "-c", script]));
    let mut linux = c.spec.linux().clone().unwrap();
    linux.set_seccomp(None);
    c.spec.set_linux(Some(linux));
    let r = capture(c).await.unwrap();
    assert_eq!(r.stdout, "u=0\nSeccomp:\t0\n", "{}", r.stderr);
}

/// The id of this process's session keyring (`KEYCTL_GET_KEYRING_ID`, `@s`).
fn host_session_keyring() -> i64 {
    // SAFETY: keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) takes no buffer.
    let id = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            0 as libc::c_long,
            libc::KEY_SPEC_SESSION_KEYRING as libc::c_long,
            0 as libc::c_long,
        )
    };
    assert!(
        id > 0,
        "no session keyring: {}",
        std::io::Error::last_os_error()
    );
    id
}

/// The host's /usr bound read-only over the fixture (with /lib and /lib64 pointing into it), so
/// that the host's perl can make raw syscalls that busybox has no applet for.
fn with_host_usr(f: &Fixture, c: &mut SandboxConfig) {
    for (link, to) in [("lib", "usr/lib"), ("lib64", "usr/lib64")] {
        let _ = std::os::unix::fs::symlink(to, f.lower.join(link));
    }
    let mut mounts = c.spec.mounts().clone().unwrap();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/usr")
            .typ("bind")
            .source("/usr")
            .options(vec!["rbind".to_string(), "ro".to_string()])
            .build()
            .unwrap(),
    );
    c.spec.set_mounts(Some(mounts));
}

/// Keyrings are not namespaced: a step that could call `keyctl` would reach the keys of the
/// session that runs kiln. Docker's seccomp profile refuses `keyctl`, `add_key` and
/// `request_key` (EPERM), and runc gives every container a new session keyring; kiln does both,
/// with each runtime.
#[tokio::test]
async fn a_step_cannot_use_the_host_keyring() {
    if !std::path::Path::new("/usr/bin/perl").exists() {
        println!("skipped: the host has no /usr/bin/perl to make keyctl calls with");
        return;
    }
    let host = host_session_keyring();
    // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0): the id, or -errno.
    let script = format!(
        "my $id = syscall({}, 0, -3, 0); print $id < 0 ? -($!+0) : $id, \"\\n\"",
        libc::SYS_keyctl
    );
    let mut runtimes = vec![kiln_exec::Runtime::Builtin];
    for name in ["runc", "crun"] {
        if std::process::Command::new(name)
            .arg("--version")
            .output()
            .is_ok()
        {
            runtimes.push(kiln_exec::Runtime::Oci(name.to_string()));
        } else {
            println!("not tested with `{name}`: it is not installed");
        }
    }
    for runtime in runtimes {
        for confined in [true, false] {
            let f = fixture();
            let mut c = config(&f, &process(&["/usr/bin/perl", "-e", &script]));
            c.runtime = runtime.clone();
            with_host_usr(&f, &mut c);
            if !confined {
                let mut linux = c.spec.linux().clone().unwrap();
                linux.set_seccomp(None);
                c.spec.set_linux(Some(linux));
            }
            let r = capture(c).await.unwrap();
            assert_eq!(r.outcome.exit_code, 0, "{runtime}: {}", r.stderr);
            let id: i64 =
                r.stdout.trim().parse().unwrap_or_else(|_| {
                    panic!("{runtime}: not a number: {:?} {}", r.stdout, r.stderr)
                });
            if confined {
                assert_eq!(id, -libc::EPERM as i64, "{runtime}: keyctl was allowed");
            } else {
                assert!(id > 0, "{runtime}: no session keyring in the step: {id}");
                assert_ne!(
                    id, host,
                    "{runtime}: the step shares kiln's session keyring"
                );
            }
        }
    }
}
