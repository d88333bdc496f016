//! A hostile step against the sandbox: device nodes it makes (or an image ships) never open a
//! host device, and its processes die with the kiln that started them. Every runtime (built-in,
//! runc, crun) is tried.

mod common;

use common::{
    assert_ok, kill_survivors, processes_running, run_sh, runtimes, stdout, temp_context, Kiln,
};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn build(k: &Kiln, dockerfile: &str, runtime: &str, extra: &[&str]) -> Output {
    let ctx = temp_context("kiln-secsbx-", &[("Dockerfile", dockerfile)]);
    k.cmd()
        .args([
            "build",
            "--no-cache",
            "--progress",
            "plain",
            "--runtime",
            runtime,
        ])
        .args(extra)
        .arg(ctx.path())
        .output()
        .expect("run kiln build")
}

/// Builds `dockerfile` under `runtime`, which must succeed, and returns all it printed.
fn build_output(k: &Kiln, dockerfile: &str, runtime: &str) -> String {
    let out = build(k, dockerfile, runtime, &[]);
    assert_ok(&out, &format!("the build under {runtime}"));
    all_output(&out)
}

/// Everything the build printed (the step's output is in the plain progress on stderr).
fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The major number of a device number (glibc's `gnu_dev_major`).
fn major(rdev: u64) -> u64 {
    ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)
}

/// The minor number of a device number (glibc's `gnu_dev_minor`).
fn minor(rdev: u64) -> u64 {
    (rdev & 0xff) | ((rdev >> 12) & !0xff)
}

/// A loop device over a file of this test, detached when dropped.
struct Loop {
    device: String,
    backing: tempfile::NamedTempFile,
    major: u64,
    minor: u64,
}

impl Loop {
    /// `None` (with the reason printed) when this host has no loop devices for us.
    fn new(content: &[u8]) -> Option<Loop> {
        let backing = tempfile::NamedTempFile::new().unwrap();
        let mut data = content.to_vec();
        data.resize(1 << 20, 0);
        std::fs::write(backing.path(), &data).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing.path())
            .output();
        let out = match out {
            Ok(o) if o.status.success() => o,
            Ok(o) => {
                println!(
                    "skipped: no loop device (`losetup --find --show` failed: {})",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                return None;
            }
            Err(e) => {
                println!("skipped: cannot run `losetup` ({e}); install util-linux");
                return None;
            }
        };
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let rdev = std::fs::metadata(&device).unwrap().rdev();
        Some(Loop {
            device,
            backing,
            major: major(rdev),
            minor: minor(rdev),
        })
    }

    fn content(&self) -> Vec<u8> {
        std::fs::read(self.backing.path()).unwrap()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

#[test]
fn mknod_of_a_loop_device_cannot_read_or_write_the_hosts_disk() {
    let secret = b"kiln-secret-on-the-host-disk";
    let Some(disk) = Loop::new(secret) else {
        return;
    };
    let k = Kiln::with_busybox();
    for runtime in runtimes() {
        // In the root, in /dev and in /tmp: all of them must refuse the open.
        let dockerfile = format!(
            "FROM busybox\n\
             RUN for n in /blk /dev/blk /tmp/blk; do \
                   mknod $n b {maj} {min}; \
                   echo \"read:$(head -c 28 $n)\"; \
                   test -b $n && printf PWNED | dd of=$n conv=notrunc 2>/dev/null \
                     && echo \"wr\"\"ote-$n\"; \
                 done; true\n",
            maj = disk.major,
            min = disk.minor,
        );
        let text = build_output(&k, &dockerfile, runtime);
        assert!(
            !text.contains("kiln-secret"),
            "under {runtime} the step read the host's disk:\n{text}"
        );
        assert!(
            !text.contains("wrote-"),
            "under {runtime} the step wrote to the host's disk:\n{text}"
        );
        assert!(
            disk.content().starts_with(secret),
            "under {runtime} the backing file changed"
        );
    }
}

#[test]
fn mknod_of_kmsg_cannot_write_the_kernel_log() {
    let k = Kiln::with_busybox();
    for runtime in runtimes() {
        let text = build_output(
            &k,
            "FROM busybox\n\
             RUN for n in /kmsg /dev/kmsg2 /tmp/kmsg; do \
                   mknod $n c 1 11; \
                   test -c $n && echo kiln-kmsg-probe > $n && echo \"wr\"\"ote-$n\"; \
                 done; true\n",
            runtime,
        );
        assert!(
            !text.contains("wrote-"),
            "under {runtime} the step wrote the kernel log:\n{text}"
        );
    }
}

#[test]
fn mknod_in_cache_and_tmpfs_mounts_cannot_open_a_device() {
    let k = Kiln::with_busybox();
    for runtime in runtimes() {
        let text = build_output(
            &k,
            "FROM busybox\n\
             RUN --mount=type=cache,target=/cache --mount=type=tmpfs,target=/scratch \
                 for n in /cache/kmsg /scratch/kmsg; do \
                   mknod $n c 1 11; \
                   test -c $n && echo kiln-kmsg-probe > $n && echo \"wr\"\"ote-$n\"; \
                   rm -f $n; \
                 done; true\n",
            runtime,
        );
        assert!(
            !text.contains("wrote-"),
            "under {runtime} a node in a mount opened:\n{text}"
        );
    }
}

#[test]
fn kiln_run_cannot_open_a_device_it_makes() {
    let k = Kiln::with_busybox();
    for runtime in runtimes() {
        let out = run_sh(
            &k,
            runtime,
            "for n in /kmsg /dev/kmsg2; do mknod $n c 1 11; \
             test -c $n && echo kiln-kmsg-probe > $n && echo \"wr\"\"ote-$n\"; done; true",
        );
        assert_ok(&out, &format!("kiln run under {runtime}"));
        assert!(
            !stdout(&out).contains("wrote-"),
            "under {runtime} `kiln run` wrote the kernel log: {}",
            stdout(&out)
        );
    }
}

/// Whether this host has a v1 `devices` cgroup hierarchy, which kiln puts every run under.
fn v1_device_cgroup() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(" - "))
        .any(|(_, fs)| {
            let mut f = fs.split(' ');
            f.next() == Some("cgroup")
                && f.nth(1)
                    .is_some_and(|o| o.split(',').any(|o| o == "devices"))
        })
}

/// Whether a node an image ships is kept from opening under `runtime` here. crun keeps no root
/// `nodev` and runs without a cgroup manager: only kiln's v1 device cgroup stops it, and on a
/// cgroup v2 host there is none (kiln warns: see exec/src/oci.rs).
fn guarded(runtime: &str) -> bool {
    if runtime == "crun" && !v1_device_cgroup() {
        println!("skipped crun: no v1 device cgroup on this host (the gap kiln warns about)");
        return false;
    }
    true
}

#[test]
fn a_device_node_an_image_ships_cannot_be_opened() {
    let k = Kiln::with_busybox();
    // An image with a kmsg node in its layer (made here by a step, under the built-in sandbox).
    let out = build(
        &k,
        "FROM busybox\nRUN mknod /shipped-kmsg c 1 11\n",
        "builtin",
        &["-t", "shipped-node"],
    );
    assert_ok(&out, "building the image with a node");
    for runtime in runtimes() {
        if !guarded(runtime) {
            continue;
        }
        let out = k.run(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "shipped-node",
            "sh",
            "-c",
            "ls -l /shipped-kmsg; echo kiln-kmsg-probe > /shipped-kmsg && echo \"wr\"\"ote-it\"; true",
        ]);
        assert_ok(&out, &format!("kiln run under {runtime}"));
        assert!(
            stdout(&out).contains("1,  11"),
            "the node is in the image: {}",
            stdout(&out)
        );
        assert!(
            !stdout(&out).contains("wrote-it"),
            "under {runtime} the image's node opened: {}",
            stdout(&out)
        );
    }
}

#[test]
fn a_device_node_a_step_makes_stays_in_the_layer() {
    let k = Kiln::with_busybox();
    // crun without a device cgroup refuses `mknod` of devices (seccomp): there the node is not
    // made at all.
    for runtime in runtimes() {
        if !guarded(runtime) {
            continue;
        }
        let dest = tempfile::tempdir().unwrap();
        let out = build(
            &k,
            "FROM busybox\nRUN mknod /made-kmsg c 1 11 && mknod /made-loop b 7 0\n",
            runtime,
            &["-o", &format!("type=local,dest={}", dest.path().display())],
        );
        assert_ok(&out, &format!("the build under {runtime}"));
        let kmsg = std::fs::symlink_metadata(dest.path().join("made-kmsg")).unwrap();
        assert!(kmsg.file_type().is_char_device(), "{runtime}: {kmsg:?}");
        assert_eq!(
            (major(kmsg.rdev()), minor(kmsg.rdev())),
            (1, 11),
            "{runtime}"
        );
        let blk = std::fs::symlink_metadata(dest.path().join("made-loop")).unwrap();
        assert!(blk.file_type().is_block_device(), "{runtime}: {blk:?}");
    }
}

#[test]
fn standard_devices_still_work() {
    let k = Kiln::with_busybox();
    let script = "set -e; \
         echo x > /dev/null; \
         test \"$(head -c 3 /dev/zero | wc -c)\" -eq 3; \
         test \"$(head -c 8 /dev/urandom | wc -c)\" -eq 8; \
         test \"$(head -c 8 /dev/random | wc -c)\" -eq 8; \
         if echo x > /dev/full; then exit 9; fi; \
         test -c /dev/tty; \
         exec 3<>/dev/ptmx; ls /dev/pts | grep -q 0; \
         echo x > /dev/shm/f; test -d /dev/mqueue; \
         mkfifo /tmp/fifo; echo standard-devices-ok";
    for runtime in runtimes() {
        let text = build_output(&k, &format!("FROM busybox\nRUN {script}\n"), runtime);
        assert!(text.contains("standard-devices-ok"), "{runtime}");
        let out = run_sh(&k, runtime, script);
        assert_ok(&out, &format!("kiln run under {runtime}"));
        assert!(stdout(&out).contains("standard-devices-ok"), "{runtime}");
    }
}

/// A `sleep` argument no other test (or test run) uses.
fn unique_seconds() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n =
        (std::process::id() * 7919 + nanos / 1000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 900_000;
    (100_000 + n).to_string()
}

/// Starts `kiln ARGS` (which runs `sleep SECONDS` in a sandbox), kills it with SIGKILL once the
/// sleep runs, and says whether the sleep was gone within a few seconds.
fn sleep_dies_with_kiln(k: &Kiln, args: &[&str], seconds: &str, what: &str) {
    let argv = ["sleep", seconds];
    let mut kiln = k
        .cmd()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_running(&argv).is_empty() {
        if Instant::now() > deadline || kiln.try_wait().unwrap().is_some() {
            let _ = kiln.kill();
            panic!("{what}: the step never started");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kiln.kill().unwrap();
    kiln.wait().unwrap();
    let left = kill_survivors(&argv);
    assert!(
        left.is_empty(),
        "{what}: the step's `sleep {seconds}` outlived a killed kiln"
    );
}

#[test]
fn kill_9_of_kiln_build_leaves_no_step_running() {
    let k = Kiln::with_busybox();
    for runtime in runtimes() {
        let seconds = unique_seconds();
        let ctx = temp_context(
            "kiln-secsbx-",
            &[(
                "Dockerfile",
                &format!("FROM busybox\nRUN sleep {seconds}\n"),
            )],
        );
        let ctx_path = ctx.path().to_str().unwrap();
        sleep_dies_with_kiln(
            &k,
            &[
                "build",
                "--progress",
                "plain",
                "--runtime",
                runtime,
                ctx_path,
            ],
            &seconds,
            &format!("kiln build --runtime {runtime}"),
        );
        // runc and crun run in the engine's mount namespace: their root is unmounted too.
        let store = k.root.path().to_string_lossy().into_owned();
        let store_mounts = || -> Vec<String> {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .filter(|l| l.contains(&store))
                .map(str::to_string)
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !store_mounts().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            store_mounts().is_empty(),
            "{runtime}: a mount of the store outlived the killed build: {:?}",
            store_mounts()
        );
    }
}

#[test]
fn kill_9_of_kiln_run_leaves_no_container_running() {
    let k = Kiln::with_busybox();
    for runtime in runtimes() {
        let seconds = unique_seconds();
        sleep_dies_with_kiln(
            &k,
            &[
                "run",
                "--rm",
                "--runtime",
                runtime,
                "busybox",
                "sleep",
                &seconds,
            ],
            &seconds,
            &format!("kiln run --runtime {runtime}"),
        );
    }
}

/// A devtmpfs mounted in a directory of this test, lazily unmounted when dropped.
struct DevMount(std::path::PathBuf);

impl Drop for DevMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn run_mount_bind_of_a_context_holding_a_devtmpfs_cannot_open_host_devices() {
    let ctx = temp_context(
        "kiln-secsbx-",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN --mount=type=bind,target=/ctx \
                 test -c /ctx/devs/kmsg && echo kiln-kmsg-probe > /ctx/devs/kmsg \
                 && echo \"wr\"\"ote-kmsg\"; true\n",
        )],
    );
    let devs = ctx.path().join("devs");
    std::fs::create_dir(&devs).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "devtmpfs", "devtmpfs"])
        .arg(&devs)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        println!("skipped: cannot mount a devtmpfs here");
        return;
    }
    let _guard = DevMount(devs);
    let k = Kiln::with_busybox();
    for runtime in runtimes() {
        let out = k
            .cmd()
            .args([
                "build",
                "--no-cache",
                "--progress",
                "plain",
                "--runtime",
                runtime,
            ])
            .arg(ctx.path())
            .output()
            .unwrap();
        assert_ok(&out, &format!("the build under {runtime}"));
        let text = all_output(&out);
        assert!(
            !text.contains("wrote-"),
            "under {runtime} the context's devtmpfs opened:\n{text}"
        );
    }
}

#[test]
fn a_device_node_an_image_ships_opens_under_crun() {
    let secret = b"kiln-secret-on-the-host-disk";
    let Some(disk) = Loop::new(secret) else {
        return;
    };
    // A base image imported from a tar that holds a kmsg node and a node of the test's loop
    // device (what a hostile base image can ship), both outside `/dev`.
    let rootfs = tempfile::tempdir().unwrap();
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", common::busybox_rootfs().display()))
        .arg(rootfs.path())
        .status()
        .unwrap();
    assert!(copied.success());
    let nodes = rootfs.path().join("nodes");
    std::fs::create_dir(&nodes).unwrap();
    for (name, kind, maj, min) in [("kmsg", "c", 1, 11), ("disk", "b", disk.major, disk.minor)] {
        let made = Command::new("mknod")
            .arg(nodes.join(name))
            .args([kind, &maj.to_string(), &min.to_string()])
            .status()
            .unwrap();
        assert!(made.success(), "mknod {name}");
    }
    let tar = tempfile::NamedTempFile::new().unwrap();
    let packed = Command::new("tar")
        .arg("-C")
        .arg(rootfs.path())
        .arg("-cf")
        .arg(tar.path())
        .arg(".")
        .status()
        .unwrap();
    assert!(packed.success());
    let k = Kiln::new();
    let out = k.run(&[
        "import",
        "--change",
        "CMD [\"sh\"]",
        tar.path().to_str().unwrap(),
        "shipped-nodes:latest",
    ]);
    assert_ok(&out, "kiln import of the tar holding device nodes");

    let script = "test -c /nodes/kmsg && test -b /nodes/disk && echo \"nodes-\"\"present\"; \
         echo \"read:$(head -c 28 /nodes/disk)\"; \
         printf PWNED | dd of=/nodes/disk conv=notrunc 2>/dev/null && echo \"wr\"\"ote-disk\"; \
         echo kiln-kmsg-probe > /nodes/kmsg && echo \"wr\"\"ote-kmsg\"; \
         echo x > /dev/null && test \"$(head -c 3 /dev/zero | wc -c)\" -eq 3 \
           && test \"$(head -c 8 /dev/urandom | wc -c)\" -eq 8 \
           && exec 3<>/dev/ptmx && echo \"standard-\"\"ok\"; true";
    for runtime in runtimes() {
        if !guarded(runtime) {
            let out = build(&k, "FROM shipped-nodes\nRUN true\n", runtime, &[]);
            assert!(
                all_output(&out).contains("a device node that a base image ships can be opened"),
                "crun without a device cgroup must say so:\n{}",
                all_output(&out)
            );
            continue;
        }
        let built = build(
            &k,
            &format!("FROM shipped-nodes\nRUN {script}\n"),
            runtime,
            &[],
        );
        let run = k.run(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            "shipped-nodes",
            "sh",
            "-c",
            script,
        ]);
        for (what, out) in [("a RUN step", &built), ("kiln run", &run)] {
            assert_ok(out, &format!("{what} under {runtime}"));
            let text = all_output(out);
            assert!(
                text.contains("nodes-present"),
                "{what} under {runtime}: the image's nodes are missing:\n{text}"
            );
            assert!(
                !text.contains("kiln-secret"),
                "{what} under {runtime} read the host's disk:\n{text}"
            );
            assert!(
                !text.contains("wrote-"),
                "{what} under {runtime} wrote through the image's node:\n{text}"
            );
            assert!(
                text.contains("standard-ok"),
                "{what} under {runtime}: a standard device did not open:\n{text}"
            );
            assert!(
                disk.content().starts_with(secret),
                "{what} under {runtime}: the backing file changed"
            );
        }
    }
}
