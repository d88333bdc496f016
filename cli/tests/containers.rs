//! Containers with a lifecycle, end to end as root: `kiln run -d` under a monitor that outlives
//! the `kiln` that started it, `ps`, `logs`, `stop`, `kill`, `start`, `rm`, `wait`, `inspect`,
//! `container prune`, `--restart`, and what a dead monitor looks like.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn run_detached(k: &Kiln, args: &[&str]) -> String {
    let mut all = vec!["run", "-d"];
    all.extend_from_slice(args);
    let out = k.run(&all);
    assert_ok(&out, "kiln run -d");
    let id = stdout(&out).trim().to_string();
    assert_eq!(id.len(), 64, "run -d prints the full id: {id:?}");
    id
}

fn inspect(k: &Kiln, name: &str) -> serde_json::Value {
    let out = k.run(&["inspect", name]);
    assert_ok(&out, "kiln inspect");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("inspect prints JSON");
    v[0].clone()
}

fn status(k: &Kiln, name: &str) -> String {
    inspect(k, name)["State"]["Status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits up to `secs` for `cond`.
fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_detached_container_is_listed_logged_stopped_and_removed() {
    let k = Kiln::with_busybox();
    let id = run_detached(
        &k,
        &[
            "--name",
            "web",
            "busybox",
            "sh",
            "-c",
            "echo out-line; echo err-line >&2; exec sleep 300",
        ],
    );
    // `kiln run -d` returned: the container runs on under its monitor.
    let ps = k.run(&["ps"]);
    assert_ok(&ps, "kiln ps");
    let line = stdout(&ps)
        .lines()
        .find(|l| l.starts_with(&id[..12]))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("running container not listed:\n{}", stdout(&ps)));
    assert!(line.contains("Up ") && line.ends_with("web"), "{line}");
    assert_eq!(stdout(&k.run(&["ps", "-q"])).trim(), &id[..12]);

    eventually(10, "both lines logged", || {
        stdout(&k.run(&["logs", "web"])).contains("out-line")
    });
    let logs = k.run(&["logs", "web"]);
    assert_eq!(stdout(&logs), "out-line\n");
    assert_eq!(stderr(&logs), "err-line\n");
    let last = k.run(&["logs", "--tail", "1", &id[..6]]);
    assert_eq!(
        stdout(&last).lines().count() + stderr(&last).lines().count(),
        1,
        "--tail 1 by an id prefix"
    );

    // Other commands that need the store work while it runs.
    let out = k.run(&["--lock-timeout", "0", "run", "--rm", "busybox", "true"]);
    assert_ok(&out, "kiln run while a detached container runs");

    let rm = k.run(&["rm", "web"]);
    assert_eq!(rm.status.code(), Some(1));
    assert!(
        stderr(&rm).contains("container `web` is running"),
        "{}",
        stderr(&rm)
    );

    let started = Instant::now();
    let stop = k.run(&["stop", "-t", "5", "web"]);
    assert_ok(&stop, "kiln stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM stops sleep at once"
    );
    let v = inspect(&k, "web");
    assert_eq!(v["State"]["Status"], "exited");
    assert_eq!(v["State"]["ExitCode"], 143);
    assert_eq!(v["Name"], "/web");
    assert_eq!(v["Id"], id.as_str());
    assert!(
        stdout(&k.run(&["ps"])).lines().count() == 1,
        "only the header"
    );
    let all = stdout(&k.run(&["ps", "-a"]));
    assert!(all.contains("Exited (143)"), "{all}");
    assert_eq!(stdout(&k.run(&["wait", "web"])).trim(), "143");

    assert_ok(&k.run(&["rm", "web"]), "kiln rm");
    assert!(!stdout(&k.run(&["ps", "-a"])).contains(&id[..12]));
    assert!(!k.root.path().join("containers").join(&id).exists());
}

#[test]
fn a_container_outlives_the_kiln_that_started_it_and_a_dead_monitor_reads_as_exited() {
    let k = Kiln::with_busybox();
    let seconds = format!("{}", 100_000 + std::process::id() % 100_000);
    let argv = ["sleep", seconds.as_str()];
    run_detached(&k, &["--name", "m", "busybox", "sleep", &seconds]);
    // The `kiln run -d` process is gone; the command still runs.
    eventually(10, "the command runs", || {
        !processes_running(&argv).is_empty()
    });
    assert_eq!(status(&k, "m"), "running");
    let monitor = inspect(&k, "m")["State"]["Pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{monitor}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("__kiln-monitor"),
        "State.Pid is the monitor"
    );
    std::process::Command::new("kill")
        .args(["-KILL", &monitor.to_string()])
        .status()
        .unwrap();
    // Never shown running once its monitor is dead, and its command goes with it.
    eventually(5, "the monitor's death is seen", || {
        status(&k, "m") == "exited"
    });
    let ps = stdout(&k.run(&["ps", "-a"]));
    assert!(ps.contains("Exited (unknown)"), "{ps}");
    assert_eq!(
        kill_survivors(&argv),
        Vec::<i32>::new(),
        "the command dies with its monitor"
    );
    let wait = k.run(&["wait", "m"]);
    assert_eq!(wait.status.code(), Some(1));
    assert!(
        stderr(&wait).contains("exit code unknown"),
        "{}",
        stderr(&wait)
    );
    assert_ok(
        &k.run(&["rm", "m"]),
        "kiln rm of a container whose monitor died",
    );
}

#[test]
fn kill_start_and_exit_codes_follow_docker() {
    let k = Kiln::with_busybox();
    run_detached(&k, &["--name", "k", "busybox", "sleep", "300"]);
    assert_ok(&k.run(&["kill", "k"]), "kiln kill");
    assert_eq!(inspect(&k, "k")["State"]["ExitCode"], 137);
    assert_ok(&k.run(&["start", "k"]), "kiln start");
    assert_eq!(status(&k, "k"), "running");
    assert_ok(&k.run(&["kill", "-s", "TERM", "k"]), "kiln kill -s TERM");
    assert_eq!(stdout(&k.run(&["wait", "k"])).trim(), "143");
    assert_ok(&k.run(&["rm", "-f", "k"]), "kiln rm -f");

    run_detached(&k, &["--name", "f", "busybox", "sleep", "300"]);
    assert_ok(
        &k.run(&["rm", "-f", "f"]),
        "kiln rm -f of a running container",
    );
    assert!(!stdout(&k.run(&["ps", "-a"])).contains(" f\n"));

    // Foreground: the command's code; kiln's own failures: 125; a missing command: 127.
    let out = k.run(&["run", "busybox", "sh", "-c", "echo hi; exit 3"]);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(3), "hi\n")
    );
    let out = k.run(&["run", "--rm", "no-such-image-here:1"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let out = k.run(&["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let out = k.run(&["run", "--rm", "--restart", "on-failure", "busybox", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("conflict"), "{}", stderr(&out));
    for cmd in ["logs", "stop", "kill", "start", "rm", "wait", "inspect"] {
        let out = k.run(&[cmd, "nosuch"]);
        assert_eq!(out.status.code(), Some(1), "kiln {cmd} nosuch");
        assert!(
            stderr(&out).contains("no container `nosuch`"),
            "kiln {cmd}: {}",
            stderr(&out)
        );
    }
    // The foreground container (not --rm) is listed and removable, as is everything.
    let all = stdout(&k.run(&["ps", "-a"]));
    assert!(all.contains("Exited (3)"), "{all}");
    let pruned = k.run(&["container", "prune"]);
    assert_ok(&pruned, "kiln container prune");
    assert_eq!(stdout(&k.run(&["ps", "-aq"])), "");
    let left: Vec<_> = std::fs::read_dir(k.root.path().join("containers"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "container directories left: {left:?}");
}

#[test]
fn foreground_output_is_logged_and_start_attach_passes_on_the_new_output_and_the_exit_code() {
    let k = Kiln::with_busybox();
    let out = k.run(&[
        "run",
        "--name",
        "a",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(
        (stdout(&out).as_str(), stderr(&out).as_str()),
        ("out\n", "err\n")
    );
    // A foreground container's output is logged too, as Docker's.
    let logs = k.run(&["logs", "a"]);
    assert_eq!(
        (stdout(&logs).as_str(), stderr(&logs).as_str()),
        ("out\n", "err\n")
    );
    let out = k.run(&["start", "-a", "a"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    // Once more: only what this start wrote, not the earlier run's output.
    assert_eq!(stdout(&k.run(&["start", "-a", "a"])), "out\n");
    assert_eq!(stdout(&k.run(&["logs", "a"])), "out\nout\nout\n");
    let out = k.run(&["start", "-a", "a", "b"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("one container at a time"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_takes_an_image_id_full_or_short() {
    let k = Kiln::with_busybox();
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&k.run(&["image", "inspect", "busybox"]))).unwrap();
    let id = v[0]["Id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sha256:"), "{id}");
    let short = &id["sha256:".len().."sha256:".len() + 12];
    for spec in [id.as_str(), short] {
        let out = k.run(&["run", "--rm", spec, "echo", "ran"]);
        assert_ok(&out, &format!("kiln run {spec}"));
        assert_eq!(stdout(&out), "ran\n");
    }
    let out = k.run(&["run", "--rm", "0000000000ab", "true"]);
    assert_eq!(out.status.code(), Some(125));
}

#[test]
fn on_failure_restarts_up_to_its_limit_and_names_are_unique() {
    let k = Kiln::with_busybox();
    run_detached(
        &k,
        &[
            "--name",
            "r",
            "--restart",
            "on-failure:2",
            "busybox",
            "sh",
            "-c",
            "echo try; exit 4",
        ],
    );
    assert_eq!(stdout(&k.run(&["wait", "r"])).trim(), "4");
    let v = inspect(&k, "r");
    assert_eq!(v["RestartCount"], 2);
    assert_eq!(v["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(stdout(&k.run(&["logs", "r"])), "try\ntry\ntry\n");

    let again = k.run(&["run", "-d", "--name", "r", "busybox", "true"]);
    assert_eq!(again.status.code(), Some(125));
    assert!(
        stderr(&again).contains("`r` is already in use"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn run_flags_reach_the_container() {
    let k = Kiln::with_busybox();
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=yes\n\n").unwrap();
    let out = k.run(&[
        "run",
        "--rm",
        "--env-file",
        env_file.to_str().unwrap(),
        "-e",
        "A=1",
        "-w",
        "/tmp",
        "-u",
        "1000:1000",
        "--hostname",
        "box",
        "--add-host",
        "db:10.1.2.3",
        "busybox",
        "sh",
        "-c",
        "echo $FROM_FILE $A $(pwd) $(id -u) $(hostname); grep db /etc/hosts",
    ]);
    assert_ok(&out, "kiln run with flags");
    assert_eq!(stdout(&out), "yes 1 /tmp 1000 box\n10.1.2.3\tdb\n");

    let out = k.run(&["run", "--rm", "--read-only", "busybox", "touch", "/x"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "a read-only root refuses writes"
    );
    assert!(
        stderr(&out).contains("Read-only file system"),
        "{}",
        stderr(&out)
    );

    // CapEff as the kernel reports it: dropping everything leaves none, adding one adds it.
    let cap_eff = |extra: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["busybox", "grep", "CapEff", "/proc/self/status"]);
        let out = k.run(&args);
        assert_ok(&out, "kiln run grep CapEff");
        stdout(&out)
    };
    assert!(cap_eff(&["--cap-drop", "ALL"]).contains("0000000000000000"));
    let with_admin = u64::from_str_radix(
        cap_eff(&["--cap-add", "NET_ADMIN"])
            .split_whitespace()
            .nth(1)
            .unwrap(),
        16,
    )
    .unwrap();
    assert!(with_admin & (1 << 12) != 0, "CAP_NET_ADMIN is bit 12");

    let out = k.run(&[
        "run",
        "--rm",
        "--security-opt",
        "no-new-privileges",
        "busybox",
        "grep",
        "NoNewPrivs",
        "/proc/self/status",
    ]);
    assert_ok(&out, "no-new-privileges");
    assert!(stdout(&out).contains('1'), "{}", stdout(&out));
    let out = k.run(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=unconfined",
        "busybox",
        "grep",
        "Seccomp:",
        "/proc/self/status",
    ]);
    assert_ok(&out, "seccomp=unconfined");
    assert!(stdout(&out).contains('0'), "{}", stdout(&out));
    let out = k.run(&[
        "run",
        "--rm",
        "--security-opt",
        "apparmor=x",
        "busybox",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
}

#[test]
fn prune_keeps_the_snapshots_of_a_container_whose_image_is_gone() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-containers-ctx-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo built > /built\nCMD [\"cat\", \"/built\"]\n",
        )],
    );
    assert_ok(&build(&k, ctx.path(), &["-t", "app"]), "kiln build");
    let out = k.run(&["run", "--name", "keep", "app"]);
    assert_eq!(stdout(&out), "built\n");
    // Remove the image from the store's layout by hand (there is no `kiln rmi` here), then prune.
    let index = k.root.path().join("images/index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    v["manifests"]
        .as_array_mut()
        .unwrap()
        .retain(|m| !m.to_string().contains("app"));
    std::fs::write(&index, serde_json::to_vec(&v).unwrap()).unwrap();
    assert_ok(&k.run(&["prune"]), "kiln prune");
    assert_ok(&k.run(&["start", "keep"]), "kiln start after prune");
    assert_eq!(stdout(&k.run(&["wait", "keep"])).trim(), "0");
    // The foreground run's output and the restarted one's: both are logged, as in Docker.
    assert_eq!(stdout(&k.run(&["logs", "keep"])), "built\nbuilt\n");
}

/// What [`drive_through_a_pty`] does, in order, once the previous step is done.
enum PtyStep {
    /// Wait until the output holds this text.
    Await(&'static str),
    /// Pause 0.3 s (for the command to reach its `trap`s), then set the pty's window size.
    Resize(u16, u16),
    /// Pause 0.3 s, then type this.
    Type(&'static str),
}

/// Runs `kiln ARGS` on a real pty (python3's `pty`), 33x101 at the start, and takes `steps`;
/// returns the pty's output, then `modes back` or `modes changed` (whether the terminal has
/// the modes it had before kiln ran), then `exit CODE`.
fn drive_through_a_pty(k: &Kiln, args: &[&str], steps: &[PtyStep]) -> String {
    let steps: Vec<serde_json::Value> = steps
        .iter()
        .map(|s| match s {
            PtyStep::Await(t) => serde_json::json!(["await", t]),
            PtyStep::Resize(r, c) => serde_json::json!(["resize", r, c]),
            PtyStep::Type(t) => serde_json::json!(["type", t]),
        })
        .collect();
    let script = r#"
import json, os, pty, sys, time, select, struct, fcntl, termios
kiln, root, args, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
os.environ["KILN_ROOT"] = root
pid, fd = pty.fork()
if pid == 0:
    os.execv(kiln, [kiln] + args)
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
cooked = termios.tcgetattr(fd)
out, deadline = b"", time.time() + 30
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            data = os.read(fd, 1024)
        except OSError:
            break
        if not data:
            break
        out += data
    while steps and steps[0][0] != "await":
        step = steps.pop(0)
        time.sleep(0.3)
        if step[0] == "resize":
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", step[1], step[2], 0, 0))
        else:
            os.write(fd, step[1].encode())
    if steps and steps[0][1].encode() in out:
        steps.pop(0)
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
print("modes back" if termios.tcgetattr(fd) == cooked else "modes changed")
print("exit", os.waitstatus_to_exitcode(status))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, env!("CARGO_BIN_EXE_kiln")])
        .arg(k.root.path())
        .arg(serde_json::to_string(args).unwrap())
        .arg(serde_json::Value::Array(steps).to_string())
        .output()
        .unwrap();
    stdout(&out)
}

/// Drives `kiln run -it` through a real pty (python3's `pty`): the command sees a terminal of
/// the size set on the pty, is told of a resize, gets Ctrl-C, and its exit code is kiln's; what
/// it wrote is in its log too, as with Docker (it has a terminal of its own, relayed to the
/// caller's), and the caller's terminal has its modes back afterwards.
#[test]
fn run_it_gives_a_real_terminal_with_resize_ctrl_c_and_the_exit_code() {
    if !installed("python3", "python3") {
        return;
    }
    let k = Kiln::with_busybox();
    let text = drive_through_a_pty(
        &k,
        &[
            "run",
            "-it",
            "--name",
            "tty",
            "busybox",
            "sh",
            "-c",
            "test -t 0 && echo IS-TTY; stty size; trap 'stty size' WINCH; \
             trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 1; done",
        ],
        &[
            PtyStep::Await("ready\r\n"),
            PtyStep::Resize(40, 120),
            PtyStep::Await("40 120"),
            PtyStep::Type("\x03"),
        ],
    );
    assert!(text.contains("IS-TTY"), "{text}");
    assert!(
        text.contains("40 120"),
        "the resize reached the command: {text}"
    );
    assert!(
        text.contains("got-int"),
        "Ctrl-C reached the command: {text}"
    );
    assert!(
        text.contains("33 101"),
        "the size set before the start: {text}"
    );
    assert!(text.contains("modes back"), "{text}");
    assert!(text.trim_end().ends_with("exit 5"), "{text}");
    let log = stdout(&k.run(&["logs", "tty"]));
    assert!(
        log.starts_with("IS-TTY\r\n33 101\r\nready\r\n") && log.contains("40 120\r\n"),
        "{log:?}"
    );
    assert_ok(&k.run(&["rm", "tty"]), "kiln rm");
}

/// `docker run -dit IMG sh` is the usual way to keep a container up to `exec` into: its shell
/// gets a terminal of its own and an input that stays open, so it waits instead of exiting at
/// once (as kiln's did, with `/dev/null` for input). `-di` keeps a reader waiting the same way,
/// and a `-t` container's terminal output is what its log holds, line ends as a terminal
/// writes them (`\r\n`), as in Docker.
#[test]
fn detached_dit_shells_stay_up_and_a_t_containers_terminal_is_logged() {
    let k = Kiln::with_busybox();
    run_detached(&k, &["-it", "--name", "shell", "busybox", "sh"]);
    run_detached(
        &k,
        &[
            "-i",
            "--name",
            "reader",
            "busybox",
            "sh",
            "-c",
            "read x; echo got $x",
        ],
    );
    run_detached(
        &k,
        &[
            "-t",
            "--name",
            "term",
            "busybox",
            "sh",
            "-c",
            "test -t 0 && echo IS-TTY; stty size; ps -o pid,tty | awk -v me=$$ '$1 == me { print ($2 == \"?\") ? \"no ctty\" : \"ctty\" }'",
        ],
    );
    assert_eq!(stdout(&k.run(&["wait", "term"])).trim(), "0");
    // On a terminal of its own (80x24 until a client attaches), its controlling terminal.
    assert_eq!(
        stdout(&k.run(&["logs", "term"])),
        "IS-TTY\r\n24 80\r\nctty\r\n"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&k, "shell"), "running");
    assert_eq!(status(&k, "reader"), "running");
    let out = k.run(&["exec", "shell", "echo", "inside"]);
    assert_ok(&out, "kiln exec into the -dit shell");
    assert_eq!(stdout(&out), "inside\n");
    // Stopped, the shell exits as Docker's does on SIGTERM (sh ignores it; the kill follows).
    assert_ok(&k.run(&["stop", "-t", "1", "shell"]), "kiln stop");
    assert_eq!(status(&k, "shell"), "exited");
    assert_ok(&k.run(&["rm", "-f", "shell", "reader", "term"]), "kiln rm");
}

/// `kiln run -t` without `-i`: the caller's terminal stays in its own mode, so Ctrl-C there
/// signals kiln, which passes it on to the command (on its own terminal, in a session of its
/// own), as `docker run`'s sig-proxy does.
#[test]
fn run_t_without_i_passes_ctrl_c_on_to_the_command() {
    if !installed("python3", "python3") {
        return;
    }
    let k = Kiln::with_busybox();
    let text = drive_through_a_pty(
        &k,
        &[
            "run",
            "-t",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got-int; exit 6' INT; echo ready; while :; do sleep 1; done",
        ],
        &[PtyStep::Await("ready"), PtyStep::Type("\x03")],
    );
    assert!(
        text.contains("got-int"),
        "Ctrl-C reached the command: {text}"
    );
    assert!(text.trim_end().ends_with("exit 6"), "{text}");
}

#[test]
fn signals_to_a_foreground_kiln_run_reach_its_command() {
    let k = Kiln::with_busybox();
    let mut child = k
        .cmd()
        .args([
            "run",
            "--name",
            "fg",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 1; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout_pipe = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout_pipe, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout_pipe, &mut rest).unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(status.code(), Some(7), "the command's exit code");
    assert_eq!(inspect(&k, "fg")["State"]["ExitCode"], 7);
}

#[test]
fn exec_runs_in_the_containers_namespaces_cgroup_and_profile() {
    let k = Kiln::with_busybox();
    run_detached(
        &k,
        &[
            "--name",
            "ex",
            "--hostname",
            "exbox",
            "busybox",
            "sh",
            "-c",
            "echo made > /tmp/made; exec sleep 300",
        ],
    );
    eventually(10, "the container wrote its file", || {
        k.run(&["exec", "ex", "test", "-f", "/tmp/made"])
            .status
            .success()
    });
    let out = k.run(&[
        "exec",
        "ex",
        "sh",
        "-c",
        "hostname; cat /tmp/made; ls -d /proc/[0-9]* | wc -l; grep -c kiln/ /proc/self/cgroup; grep Seccomp: /proc/self/status",
    ]);
    assert_ok(&out, "kiln exec");
    let lines: Vec<String> = stdout(&out).lines().map(|l| l.trim().to_string()).collect();
    assert_eq!(lines[0], "exbox", "the container's UTS namespace");
    assert_eq!(lines[1], "made", "the container's root");
    let procs: usize = lines[2].parse().unwrap();
    assert!(
        procs < 10,
        "the container's pid namespace: {procs} processes"
    );
    assert_ne!(lines[3], "0", "the container's cgroups");
    assert_eq!(lines[4], "Seccomp:\t2", "the container's seccomp profile");

    let out = k.run(&[
        "exec",
        "-u",
        "nobody",
        "-w",
        "/tmp",
        "-e",
        "X=1",
        "ex",
        "sh",
        "-c",
        "id -u; pwd; echo $X",
    ]);
    assert_eq!(stdout(&out), "65534\n/tmp\n1\n");
    assert_eq!(
        k.run(&["exec", "ex", "no-such-command"]).status.code(),
        Some(127)
    );
    assert_eq!(k.run(&["exec", "ex", "/etc"]).status.code(), Some(126));
    assert_eq!(
        k.run(&["exec", "ex", "sh", "-c", "exit 9"]).status.code(),
        Some(9)
    );
    assert_ok(&k.run(&["stop", "-t", "1", "ex"]), "kiln stop");
    let out = k.run(&["exec", "ex", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("`ex` is not running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_memory_hog_in_a_detached_container_is_killed_and_reported() {
    let k = Kiln::with_busybox();
    run_detached(
        &k,
        &[
            "--name",
            "hog",
            "--memory",
            "32m",
            "busybox",
            "sh",
            "-c",
            "head -c 200m /dev/zero | tail > /dev/null",
        ],
    );
    assert_eq!(stdout(&k.run(&["wait", "hog"])).trim(), "137");
    let v = inspect(&k, "hog");
    assert_eq!(v["State"]["OOMKilled"], true);
    assert_eq!(v["HostConfig"]["Memory"], 32 << 20);
    let error = v["State"]["Error"].as_str().unwrap();
    assert!(
        error.contains("out of memory") && error.contains("--memory"),
        "{error}"
    );
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_is_reported() {
    let k = Kiln::with_busybox();
    let out = k.run(&[
        "run",
        "--name",
        "bomb",
        "--pids-limit",
        "20",
        "busybox",
        "sh",
        "-c",
        "i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done",
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("kiln: the container reached its limit of 20 processes"),
        "{}",
        stderr(&out)
    );
    let v = inspect(&k, "bomb");
    assert!(v["State"]["Error"]
        .as_str()
        .unwrap()
        .contains("--pids-limit"));
    assert_eq!(v["HostConfig"]["PidsLimit"], 20);
}
