//! Shared set-up for the end-to-end tests: a busybox rootfs from the host's `busybox-static`,
//! a private store per test, and the test registry.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The busybox root filesystem, made once per test binary.
pub fn busybox_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kiln-e2e-rootfs-{}", std::process::id()));
        let status = Command::new("sh")
            .arg(workspace().join("testdata/make-busybox-rootfs.sh"))
            .arg(&dir)
            .status()
            .expect("run make-busybox-rootfs.sh");
        assert!(
            status.success(),
            "make-busybox-rootfs.sh failed: install busybox-static (`cargo xtask setup`)"
        );
        dir
    })
}

/// Debian's arm64 `busybox-static` binary, where `cargo xtask setup` puts it (its
/// `ARM64_BUSYBOX`); `KILN_TEST_ARM64_BUSYBOX` names another.
pub fn arm64_busybox() -> PathBuf {
    std::env::var_os("KILN_TEST_ARM64_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/lib/kiln-test/arm64/busybox"))
}

/// The arm64 busybox root filesystem, made once per test binary as [`busybox_rootfs`] is (its
/// applets are listed through `qemu-aarch64-static`, so no handler need be registered yet).
pub fn arm64_busybox_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("kiln-e2e-arm64-rootfs-{}", std::process::id()));
        let mut cmd = Command::new("sh");
        cmd.arg(workspace().join("testdata/make-busybox-rootfs.sh"))
            .arg(&dir)
            .env("BUSYBOX", arm64_busybox());
        if !cfg!(target_arch = "aarch64") {
            cmd.env("BUSYBOX_EMULATOR", "/usr/bin/qemu-aarch64-static");
        }
        let status = cmd.status().expect("run make-busybox-rootfs.sh");
        assert!(
            status.success(),
            "make-busybox-rootfs.sh failed for the arm64 busybox: run `cargo xtask setup`"
        );
        dir
    })
}

/// A private kiln store, removed when dropped.
pub struct Kiln {
    pub root: tempfile::TempDir,
}

impl Kiln {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Kiln {
            root: tempfile::Builder::new()
                .prefix("kiln-e2e-")
                .tempdir()
                .expect("temp store"),
        }
    }

    /// A store with `busybox:latest` imported.
    pub fn with_busybox() -> Self {
        let k = Kiln::new();
        let out = k.run(&[
            "import",
            "--change",
            "CMD [\"sh\"]",
            busybox_rootfs().to_str().unwrap(),
            "busybox:latest",
        ]);
        assert_ok(&out, "kiln import busybox");
        k
    }

    /// Imports the arm64 busybox as `name`, an image for linux/arm64.
    pub fn import_arm64_busybox(&self, name: &str) {
        let out = self.run(&[
            "import",
            "--platform",
            "linux/arm64",
            "--change",
            "CMD [\"sh\"]",
            arm64_busybox_rootfs().to_str().unwrap(),
            name,
        ]);
        assert_ok(&out, "kiln import --platform linux/arm64 busybox");
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.env("KILN_ROOT", self.root.path())
            // Embedded, whatever the environment says.
            .env_remove("KILN_HOST")
            .env_remove("KILN_PROGRESS")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run kiln")
    }
}

/// `kiln build --progress plain EXTRA... CTX` in this store: the one build helper of the
/// end-to-end tests (a test needing other fixed flags passes them in `extra`).
pub fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    k.run(&args)
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A build context in a new temp dir named from `prefix`, with these files (parent directories
/// made), removed when dropped.
pub fn temp_context(prefix: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    write_files(dir.path(), files);
    dir
}

/// Writes these files under `dir`, making their parent directories.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// Copies a directory tree (the example contexts), so a test may change files in it.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A registry on 127.0.0.1: the one `cargo xtask test` started (`KILN_TEST_REGISTRY`), or one
/// started for this test from Debian's `docker-registry` (keep the guard alive while using it).
pub fn registry() -> (String, Option<RegistryGuard>) {
    if let Ok(addr) = std::env::var("KILN_TEST_REGISTRY") {
        return (addr, None);
    }
    let guard = RegistryGuard::start();
    (guard.addr.clone(), Some(guard))
}

/// A name unique to this test run, so tests sharing a registry do not collide.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

pub struct RegistryGuard {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RegistryGuard {
    pub fn start() -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), "")
    }

    /// A registry keeping its config and data in `dir`, with `extra_config` (top-level YAML
    /// sections, such as `auth:`) added to its config.
    pub fn start_with(dir: tempfile::TempDir, extra_config: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::serve(dir, extra_config, format!("127.0.0.1:{port}"))
    }

    /// An empty registry on `addr`, a fixed loopback port the test owns (for config files that
    /// must name it before it starts).
    pub fn start_at(addr: &str) -> Self {
        Self::start_at_with(addr, "")
    }

    /// [`RegistryGuard::start_at`] with lines added under the config's `http:` section (such
    /// as `  tls:` with its certificate and key).
    pub fn start_at_with(addr: &str, http_config: &str) -> Self {
        Self::serve(tempfile::tempdir().unwrap(), http_config, addr.to_string())
    }

    fn serve(dir: tempfile::TempDir, extra_config: &str, addr: String) -> Self {
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{extra_config}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry: install it with `cargo xtask setup`");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RegistryGuard {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an external checker (`skopeo`, `umoci`) and asserts it succeeds.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{program}` ({e}): install it with `cargo xtask setup`")
        });
    assert_ok(&out, &format!("{program} {}", args.join(" ")));
    stdout(&out)
}

pub fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    let text = stdout(&out);
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

/// Writes `bytes` as a blob of the OCI layout and returns its descriptor fields.
pub fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let tmp = layout.join("tmp-blob");
    std::fs::write(&tmp, bytes).unwrap();
    let d = sha256_file(&tmp);
    let hex = d.trim_start_matches("sha256:");
    std::fs::rename(&tmp, layout.join("blobs/sha256").join(hex)).unwrap();
    (d, bytes.len())
}

/// Whether `program --version` runs here; when it does not, prints that the test skips it and
/// how to install it, so a skip is never silent.
pub fn installed(program: &str, package: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("skipped for `{program}`: it is not installed (`apt-get install {package}`)");
    }
    found
}

/// The sandbox runtimes to test: the built-in one and runc always, crun when installed.
pub fn runtimes() -> Vec<&'static str> {
    let mut all = vec!["builtin", "runc"];
    if installed("crun", "crun") {
        all.push("crun");
    }
    all
}

/// Compares `got` with the golden file `cli/tests/golden/DIR/NAME`; `KILN_BLESS=1` writes it
/// instead.
pub fn check_golden(dir: &str, name: &str, got: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(dir);
    let path = dir.join(name);
    if std::env::var_os("KILN_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read `{}` ({e}): run with KILN_BLESS=1 to create it",
            path.display()
        )
    });
    assert!(
        want == got,
        "`{}` differs (run with KILN_BLESS=1 to accept):\n--- want\n{want}\n--- got\n{got}",
        path.display()
    );
}

/// A git work tree whose `.git` is served read-only over http at `/repo.git/` by git's dumb HTTP
/// protocol (`git update-server-info` and a static file server on loopback).
pub struct GitRepo {
    pub dir: tempfile::TempDir,
    port: u16,
}

impl GitRepo {
    #[allow(clippy::new_without_default)]
    pub fn new() -> GitRepo {
        let dir = tempfile::Builder::new()
            .prefix("kiln-git-repo-")
            .tempdir()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let root = dir.path().join(".git");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let root = root.clone();
                std::thread::spawn(move || serve_git(conn, &root));
            }
        });
        let repo = GitRepo { dir, port };
        repo.git(&["init", "--quiet", "--initial-branch=main"]);
        repo
    }

    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(self.dir.path())
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("run git: install it (`cargo xtask setup`)");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes the files and commits them; returns the commit.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, text) in files {
            let p = self.dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "--quiet", "-m", message]);
        self.git(&["update-server-info"]);
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/repo.git", self.port)
    }
}

/// Answers one GET with the file under `root` (dumb HTTP needs nothing more).
fn serve_git(conn: std::net::TcpStream, root: &Path) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut conn = conn;
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("");
    let file: Option<PathBuf> = path
        .strip_prefix("/repo.git/")
        .filter(|p| !p.split('/').any(|c| c == ".."))
        .map(|p| root.join(p));
    let body = file.and_then(|f| std::fs::read(f).ok());
    let head = match &body {
        Some(b) => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            b.len()
        ),
        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
    };
    let _ = conn.write_all(head.as_bytes());
    if let Some(b) = body {
        let _ = conn.write_all(&b);
    }
    let _ = conn.flush();
}

/// Pids of host processes whose argv is exactly `argv`.
pub fn processes_running(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            (cmdline == want).then_some(pid)
        })
        .collect()
}

/// Waits up to five seconds for the processes running exactly `argv` to exit, SIGKILLs any still
/// there (so a failing test leaves nothing behind) and returns their pids.
pub fn kill_survivors(argv: &[&str]) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_running(argv).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = processes_running(argv);
    for pid in &left {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    left
}

/// Host processes whose command line contains `marker`.
pub fn host_processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) {
                found.push(text);
            }
        }
    }
    found
}

/// `kiln run --rm --runtime RUNTIME busybox sh -c SCRIPT`.
pub fn run_sh(k: &Kiln, runtime: &str, script: &str) -> Output {
    k.run(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        "busybox",
        "sh",
        "-c",
        script,
    ])
}

/// A `kiln daemon` serving a store on a private unix socket: started by the test, stopped
/// (SIGTERM, then SIGKILL after 10 s) when dropped. Its stderr goes to `log`.
pub struct Daemon {
    pub store: Kiln,
    pub addr: String,
    pub log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `kiln daemon` over `store` (seed it first: the daemon then holds its lock) and
    /// waits until its socket answers.
    pub fn start(store: Kiln) -> Daemon {
        Daemon::start_with(store, None, &[], &[])
    }

    /// Starts `LAUNCHER… kiln daemon ARGS` over `store` and waits until `addr` accepts (`None`:
    /// a private unix socket, given as `--addr`; otherwise `ARGS` say where to listen).
    pub fn start_with(store: Kiln, addr: Option<&str>, args: &[&str], launcher: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("kiln-daemon-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("kiln.sock");
        let log = dir.path().join("daemon.log");
        let mut cmd = match launcher.split_first() {
            None => store.cmd(),
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest)
                    .arg(env!("CARGO_BIN_EXE_kiln"))
                    .env("KILN_ROOT", store.root.path())
                    .env_remove("KILN_PROGRESS")
                    .stdin(Stdio::null());
                c
            }
        };
        cmd.arg("daemon");
        let addr = match addr {
            Some(a) => a.to_string(),
            None => {
                let a = format!("unix://{}", socket.display());
                cmd.args(["--addr", &a]);
                a
            }
        };
        cmd.args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"));
        let child = cmd.spawn().expect("start kiln daemon");
        let mut d = Daemon {
            store,
            addr,
            log,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.accepts() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("kiln daemon exited with {status}:\n{}", d.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "kiln daemon did not listen within 30 s:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// Whether the daemon's address takes connections.
    pub fn accepts(&self) -> bool {
        match self.addr.strip_prefix("tcp://") {
            Some(hostport) => TcpStream::connect(hostport).is_ok(),
            None => std::os::unix::net::UnixStream::connect(self.socket_path()).is_ok(),
        }
    }

    /// The socket file of a `unix://` daemon.
    pub fn socket_path(&self) -> PathBuf {
        PathBuf::from(self.addr.strip_prefix("unix://").unwrap_or(&self.addr))
    }

    /// `kiln` as a client of this daemon (`KILN_HOST`), with a store of its own that it must
    /// not need.
    pub fn client(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
        c.env("KILN_HOST", &self.addr)
            .env("KILN_ROOT", self.store.root.path().join("not-the-clients"))
            .env_remove("KILN_PROGRESS")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.client().args(args).output().expect("run kiln client")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The store, for a next daemon or embedded kiln once this one has stopped.
    pub fn take_store(&mut self) -> Kiln {
        std::mem::replace(&mut self.store, Kiln::new())
    }

    /// Kills the daemon with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the daemon to exit; its exit status.
    pub fn stop(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.stop(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
