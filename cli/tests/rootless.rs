//! End-to-end tests of rootless mode: kiln run by an unprivileged user (created here with
//! `useradd`, removed afterwards) builds and runs images in a user namespace of its own, with
//! its store under `$XDG_DATA_HOME/kiln`. The test itself needs root, as CI has it.
//! Loopback ports 5143 and 5182-5183 are this file's.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A throwaway unprivileged user with a home directory; `userdel` when dropped.
struct User {
    name: String,
    home: tempfile::TempDir,
}

impl User {
    /// `None` (with the reason printed) when users cannot be created here.
    fn create() -> Option<User> {
        if !nix_is_root() {
            println!("skipped: creating a test user needs root");
            return None;
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("kilnrl{}x{n}", std::process::id());
        let home = tempfile::Builder::new()
            .prefix("kiln-rootless-")
            .tempdir()
            .unwrap();
        // World-traversable, so that the user reaches its home inside the temp dir.
        std::fs::set_permissions(
            home.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let out = match Command::new("useradd")
            .args(["--no-create-home", "--home-dir"])
            .arg(home.path())
            .arg(&name)
            .output()
        {
            Ok(o) => o,
            Err(e) => {
                println!("skipped: `useradd` cannot run: {e}");
                return None;
            }
        };
        assert_ok(&out, "useradd");
        let user = User { name, home };
        let out = Command::new("chown")
            .arg(format!("{0}:{0}", user.name))
            .arg(user.home.path())
            .output()
            .unwrap();
        assert_ok(&out, "chown the test user's home");
        Some(user)
    }

    /// Makes `path` and all below it the user's own, as a context they wrote would be.
    fn own(&self, path: &Path) {
        let out = Command::new("chown")
            .args(["-R", &format!("{0}:{0}", self.name)])
            .arg(path)
            .output()
            .unwrap();
        assert_ok(&out, "chown the context");
    }

    fn data_home(&self) -> PathBuf {
        self.home.path().join("data")
    }

    /// `sh -c SCRIPT` as this user, in its home, with `$K` the kiln binary.
    fn sh(&self, script: &str, path: &str) -> Output {
        Command::new("runuser")
            .args(["-u", &self.name, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home.path().display()))
            .arg(format!("XDG_DATA_HOME={}", self.data_home().display()))
            .arg(format!("PATH={path}"))
            .arg(format!("K={}", env!("CARGO_BIN_EXE_kiln")))
            .arg(format!(
                "MKROOTFS={}",
                workspace()
                    .join("testdata/make-busybox-rootfs.sh")
                    .display()
            ))
            .args(["/bin/sh", "-c", script])
            .current_dir(self.home.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        // The keeper of the user's namespace (and any container it left) would keep
        // `userdel` from removing the user.
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.name])
            .output();
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

const HOST_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

#[test]
fn an_unprivileged_user_builds_and_runs_images() {
    let Some(user) = User::create() else { return };
    let ctx = user.home.path().join("ctx");
    write_files(
        &ctx,
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 RUN mkdir -p /data/sub && echo a > /data/sub/a && echo hi > /hi\n\
                 COPY f /f\n\
                 RUN rm -rf /data && mkdir /data && echo b > /data/b\n\
                 USER nobody\n\
                 RUN id -u > /tmp/me\n",
            ),
            ("f", "from the context\n"),
        ],
    );
    user.own(&ctx);
    let out = user.sh(
        "set -e; sh \"$MKROOTFS\" rootfs >/dev/null; \"$K\" import rootfs busybox:latest >/dev/null; \
         \"$K\" build --progress plain -t rootless ctx; \
         \"$K\" run --rm rootless sh -c 'find /data; cat /f /hi /tmp/me; stat -c %u /tmp/me'; \
         \"$K\" run --rm --runtime runc rootless sh -c 'cat /hi; ls /sys/class >/dev/null && echo sys'",
        HOST_PATH,
    );
    let has_subids = std::fs::read_to_string("/etc/subuid")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with(&format!("{}:", user.name)))
        && Path::new("/usr/bin/newuidmap").exists();
    if !has_subids {
        // Only root is mapped: `USER nobody` must say why it cannot work.
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("not mapped in rootless kiln's user namespace"),
            "{}",
            stderr(&out)
        );
        return;
    }
    assert_ok(&out, "rootless kiln import/build/run");
    assert_eq!(
        stdout(&out),
        "/data\n/data/b\nfrom the context\nhi\n65534\n65534\nhi\nsys\n"
    );
    // The store is the user's own, under $XDG_DATA_HOME/kiln.
    assert!(user.data_home().join("kiln").is_dir());
    assert!(!Path::new(&format!("/var/lib/kiln-{}", user.name)).exists());
}

#[test]
fn an_unprivileged_user_builds_and_runs_arm64_images_under_the_emulator() {
    if !cfg!(target_arch = "x86_64") {
        println!("skipped: this test emulates arm64 on an amd64 host");
        return;
    }
    let Some(user) = User::create() else { return };
    // Registering is root's job, done once for the host (platform.rs does the same).
    assert_ok(
        &Kiln::new().run(&["setup", "emulators"]),
        "kiln setup emulators",
    );
    let ctx = user.home.path().join("ctx");
    write_files(
        &ctx,
        &[("Dockerfile", "FROM busybox-arm64\nRUN uname -m > /arch\n")],
    );
    user.own(&ctx);
    let out = user.sh(
        &format!(
            "set -e; BUSYBOX={} BUSYBOX_EMULATOR=/usr/bin/qemu-aarch64-static sh \"$MKROOTFS\" \
             rootfs >/dev/null; \"$K\" import --platform linux/arm64 rootfs busybox-arm64 \
             >/dev/null; \"$K\" build --progress plain --platform linux/arm64 -t arch ctx; \
             \"$K\" run --rm arch cat /arch; \"$K\" run --rm arch uname -m",
            arm64_busybox().display()
        ),
        HOST_PATH,
    );
    assert_ok(&out, "rootless arm64 import/build/run");
    assert_eq!(stdout(&out), "aarch64\naarch64\n");
}

#[test]
fn rootless_without_subordinate_ids_runs_as_root_and_explains_other_users() {
    let Some(user) = User::create() else { return };
    let ctx = user.home.path().join("ctx");
    write_files(
        &ctx,
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo ok > /ok && cat /proc/self/uid_map > /map\n",
        )],
    );
    let nobody = user.home.path().join("nobody");
    write_files(
        &nobody,
        &[("Dockerfile", "FROM busybox\nUSER nobody\nRUN true\n")],
    );
    let chown = user.home.path().join("chown");
    write_files(
        &chown,
        &[(
            "Dockerfile",
            "FROM busybox\nRUN touch /x && chown 1000 /x\n",
        )],
    );
    for d in [&ctx, &nobody, &chown] {
        user.own(d);
    }
    let out = user.sh(
        "sh \"$MKROOTFS\" rootfs >/dev/null && \"$K\" import rootfs busybox:latest >/dev/null",
        HOST_PATH,
    );
    assert_ok(&out, "rootless kiln import");
    // The store's user namespace keeps the maps it was made with (by the import, with the
    // subordinate ranges) until its keeper is stopped; then the next kiln makes a new one.
    let out = user.sh(
        "kill $(cut -d' ' -f1 \"$XDG_DATA_HOME/kiln/userns-keeper\")",
        HOST_PATH,
    );
    assert_ok(&out, "stop the user namespace's keeper");
    // Without newuidmap/newgidmap in PATH, only the user's own ids are mapped (to 0).
    let out = user.sh(
        "\"$K\" build --progress plain -t single ctx && \"$K\" run --rm single cat /ok /map",
        "/nonexistent",
    );
    assert_ok(&out, "rootless kiln build with one id mapped");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "ok");
    assert_eq!(lines.len(), 2, "only one id range mapped: {text}");
    assert!(lines[1].split_whitespace().next() == Some("0"), "{text}");

    let out = user.sh("\"$K\" build --progress plain nobody", "/nonexistent");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("is not mapped in rootless kiln's user namespace")
            && err.contains("/etc/subuid"),
        "{err}"
    );
    // A step's own chown to a missing id fails; kiln says why under the command's message.
    let out = user.sh("\"$K\" build --progress plain chown", "/nonexistent");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("chown: /x: Invalid argument")
            && err.contains("other user and group ids do not exist here"),
        "{err}"
    );
}

/// Whether `needle` occurs in any file under `dir` (symlinks not followed).
fn found_in_files(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            hits.extend(found_in_files(&e.path(), needle));
        } else if ft.is_file() {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(e.path());
            }
        }
    }
    hits
}

#[test]
fn rootless_secret_mount_and_network_none_work_with_every_runtime() {
    let Some(user) = User::create() else { return };
    let secret = unique("rootless-secret");
    let ctx = user.home.path().join("ctx");
    write_files(
        &ctx,
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN --mount=type=secret,id=tok,required=true wc -c < /run/secrets/tok > /toklen\n\
             RUN --network=none ls /sys/class/net > /nets\n\
             RUN test ! -e /run/secrets/tok\n",
        )],
    );
    write_files(user.home.path(), &[("secret.txt", &secret)]);
    user.own(user.home.path());
    let out = user.sh(
        "sh \"$MKROOTFS\" rootfs >/dev/null && \"$K\" import rootfs busybox:latest >/dev/null",
        HOST_PATH,
    );
    assert_ok(&out, "rootless kiln import");
    for runtime in runtimes() {
        let out = user.sh(
            &format!(
                "set -e; \"$K\" build --progress plain --no-cache --runtime {runtime} \
                 --secret id=tok,src=secret.txt -t rl ctx; \
                 \"$K\" run --rm --runtime {runtime} --network none rl \
                 sh -c 'cat /toklen /nets; ls /sys/class/net'"
            ),
            HOST_PATH,
        );
        assert_ok(&out, &format!("rootless build and run with {runtime}"));
        assert_eq!(
            stdout(&out),
            format!("{}\nlo\nlo\n", secret.len()),
            "{runtime}"
        );
        assert!(
            !stderr(&out).contains(&secret),
            "{runtime}: the secret is in the log"
        );
    }
    let hits = found_in_files(&user.data_home().join("kiln"), secret.as_bytes());
    assert!(hits.is_empty(), "the secret is in the store: {hits:?}");
}

#[test]
fn kill_9_of_rootless_kiln_run_leaves_no_step_running() {
    // The kiln the user starts re-executes itself in a user namespace: that inner engine, and
    // so its sandbox, must die with it.
    let Some(user) = User::create() else { return };
    let out = user.sh(
        "sh \"$MKROOTFS\" rootfs >/dev/null && \"$K\" import rootfs busybox:latest >/dev/null",
        HOST_PATH,
    );
    assert_ok(&out, "rootless kiln import");
    let seconds = format!("{}", 200_000 + std::process::id() % 100_000);
    let argv = ["sleep", seconds.as_str()];
    let mut kiln = Command::new("runuser")
        .args(["-u", &user.name, "--", "env", "-i"])
        .arg(format!("HOME={}", user.home.path().display()))
        .arg(format!("XDG_DATA_HOME={}", user.data_home().display()))
        .arg(format!("PATH={HOST_PATH}"))
        .args([
            env!("CARGO_BIN_EXE_kiln"),
            "run",
            "--rm",
            "busybox",
            "sleep",
            &seconds,
        ])
        .current_dir(user.home.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while processes_running(&argv).is_empty() {
        assert!(
            std::time::Instant::now() < deadline && kiln.try_wait().unwrap().is_none(),
            "the step never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // runuser's child: the kiln the user started (runuser waits for it).
    let outer = std::fs::read_to_string(format!("/proc/{}/task/{0}/children", kiln.id()))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .map(str::to_string)
        .expect("runuser runs kiln as its child");
    let status = Command::new("kill")
        .args(["-KILL", &outer])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = kiln.wait();
    let left = kill_survivors(&argv);
    assert!(
        left.is_empty(),
        "the step outlived the killed rootless kiln"
    );
}

/// Without delegated cgroups a rootless kiln cannot apply `--memory`, `--cpus` or
/// `--pids-limit`: it says so once per command and builds and runs anyway, with either runtime.
#[test]
fn rootless_limits_without_cgroups_warn_once_and_never_fail_the_build() {
    let Some(user) = User::create() else { return };
    let ctx = user.home.path().join("ctx");
    write_files(
        &ctx,
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo one > /one\nRUN echo two > /two\n",
        )],
    );
    user.own(&ctx);
    let out = user.sh(
        "set -e; sh \"$MKROOTFS\" rootfs >/dev/null; \"$K\" import rootfs busybox:latest >/dev/null; \
         \"$K\" build --progress plain --memory 64m --cpus 0.5 --pids-limit 100 -t limited ctx; \
         \"$K\" run --rm --runtime runc --memory 64m --pids-limit 100 limited cat /one /two",
        HOST_PATH,
    );
    assert_ok(&out, "rootless kiln build/run with limits");
    assert_eq!(stdout(&out), "one\ntwo\n");
    let err = stderr(&out);
    // Once per command: the build (two steps) and the run.
    assert_eq!(
        err.matches("warning: kiln cannot limit the memory").count(),
        2,
        "{err}"
    );
    // The default pids limit alone is nobody's request: no warning without flags.
    let out = user.sh("\"$K\" run --rm limited true", HOST_PATH);
    assert_ok(&out, "rootless kiln run without limits");
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn rootless_volumes_binds_and_published_ports_work() {
    let Some(user) = User::create() else { return };
    write_files(user.home.path(), &[("host/f", "from the host\n")]);
    user.own(user.home.path());
    let out = user.sh(
        "set -e; sh \"$MKROOTFS\" rootfs >/dev/null; \"$K\" import rootfs busybox:latest >/dev/null; \
         \"$K\" run --rm -v data:/etc -v \"$HOME/host:/mnt:ro\" busybox \
           sh -c 'cat /mnt/f; test -f /etc/passwd && echo seeded; echo kept > /etc/kept'; \
         \"$K\" run --rm -v data:/etc busybox cat /etc/kept; \
         \"$K\" volume ls -q; \
         \"$K\" run -d --name web -p 127.0.0.1:5143:80 busybox \
           sh -c 'mkdir /www; echo rootless page > /www/index.html; exec httpd -f -p 80 -h /www' >/dev/null; \
         i=0; until busybox wget -q -O- http://127.0.0.1:5143/ 2>/dev/null; do \
           i=$((i+1)); [ $i -lt 200 ] || exit 9; sleep 0.1; done; \
         \"$K\" rm -f web >/dev/null",
        HOST_PATH,
    );
    assert_ok(&out, "rootless -v, volumes and -p");
    assert_eq!(
        stdout(&out),
        "from the host\nseeded\nkept\ndata\nrootless page\n"
    );
}

/// A rootless container on the default `bridge` network gets an address of its own and a
/// `pasta` to the host: its gateway reaches a server the test runs on the host's 127.0.0.1,
/// and a port it publishes on 127.0.0.1 serves a page. On a user-defined network, whose bridge
/// lives in the network's keeper with one `pasta` to the host, containers reach each other by
/// name, the host's loopback through 198.51.100.1, and publish ports; `network rm` stops the
/// keeper and its `pasta`.
#[test]
fn rootless_bridge_containers_get_their_network_from_pasta() {
    let Some(user) = User::create() else { return };
    if !Path::new("/dev/net/tun").exists() {
        println!("skipped: no /dev/net/tun for `pasta`");
        return;
    }
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "page on the host\n").unwrap();
    let mut server = Command::new("busybox")
        .args(["httpd", "-f", "-p", "127.0.0.1:5182", "-h"])
        .arg(www.path())
        .spawn()
        .unwrap();
    let default = user.sh(
        "set -e; sh \"$MKROOTFS\" rootfs >/dev/null; \"$K\" import rootfs busybox:latest >/dev/null; \
         \"$K\" run --rm --network bridge busybox sh -c \
           'ip -4 -o addr show eth0 | grep -q \" 172\\.\" && echo addressed; \
            gw=$(ip route | awk \"/^default/ {print \\$3}\"); wget -q -O- http://$gw:5182/'; \
         \"$K\" run -d --name web --network bridge -p 127.0.0.1:5183:80 busybox \
           sh -c 'mkdir /www; echo page in the container > /www/index.html; exec httpd -f -p 80 -h /www' >/dev/null; \
         i=0; until busybox wget -q -O- http://127.0.0.1:5183/ 2>/dev/null; do \
           i=$((i+1)); [ $i -lt 200 ] || exit 9; sleep 0.1; done; \
         \"$K\" rm -f web >/dev/null; \
         i=0; while pgrep -u \"$(id -u)\" -x pasta >/dev/null; do \
           i=$((i+1)); [ $i -lt 50 ] || { echo pasta left running; exit 8; }; sleep 0.1; done",
        HOST_PATH,
    );
    let named = user.sh(
        "set -e; \"$K\" network create t1 >/dev/null; \
         \"$K\" run -d --name named --network t1 -p 127.0.0.1:5183:80 busybox \
           sh -c 'mkdir /www; echo page by name > /www/index.html; exec httpd -f -p 80 -h /www' >/dev/null; \
         \"$K\" run --rm --network t1 busybox sh -c \
           'i=0; until wget -q -O- http://named/ 2>/dev/null; do i=$((i+1)); [ $i -lt 100 ] || exit 9; sleep 0.1; done; \
            wget -q -O- http://198.51.100.1:5182/'; \
         busybox wget -q -O- http://127.0.0.1:5183/ | sed 's/by name/published/'; \
         \"$K\" rm -f named >/dev/null; \"$K\" network rm t1 >/dev/null; \
         i=0; while ps -u \"$(id -u)\" -o stat=,comm= | awk '$1 !~ /^Z/ && $2 ~ /^pass/' | grep -q .; do \
           i=$((i+1)); [ $i -lt 50 ] || { echo pasta left running; exit 8; }; sleep 0.1; done",
        HOST_PATH,
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_ok(&default, "rootless --network bridge");
    assert_eq!(
        stdout(&default),
        "addressed\npage on the host\npage in the container\n"
    );
    assert_ok(&named, "rootless user-defined network");
    assert_eq!(
        stdout(&named),
        "page by name\npage on the host\npage published\n"
    );
}
