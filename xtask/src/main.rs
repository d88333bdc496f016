//! kiln's automation: `cargo xtask setup|demo|test|bench|differential`. Everything a fresh machine needs is
//! installed here, so the README's two commands work with nothing but the Rust toolchain.

mod differential;
mod summary;

use anyhow::{bail, Context, Result};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Debian packages the demo and the tests use, with a file each installs.
const PACKAGES: &[(&str, &str)] = &[
    ("busybox-static", "/bin/busybox"),
    ("docker-registry", "/usr/bin/docker-registry"),
    ("skopeo", "/usr/bin/skopeo"),
    ("umoci", "/usr/bin/umoci"),
    ("runc", "/usr/sbin/runc"),
    // GNU time: `cargo xtask bench` reads each build's peak memory from it.
    ("time", "/usr/bin/time"),
    // htpasswd (bcrypt) for the Basic-auth registry tests; openssl signs test tokens.
    ("apache2-utils", "/usr/bin/htpasswd"),
    ("openssl", "/usr/bin/openssl"),
    // newuidmap/newgidmap: rootless kiln maps /etc/subuid ranges (cli/tests/rootless.rs).
    ("uidmap", "/usr/bin/newuidmap"),
    // `ADD` of git repositories runs the host's git (solver/src/ops/git.rs, cli/tests/git.rs).
    ("git", "/usr/bin/git"),
    // tini-static: the init of containers run with `--runtime runc|crun` (exec/src/oci/init.rs).
    ("tini", "/usr/bin/tini-static"),
    // `--runtime crun` is tested beside runc (cli/tests/runtime.rs).
    ("crun", "/usr/bin/crun"),
    // QEMU user mode: `kiln setup emulators` registers it to run foreign `RUN` steps
    // (exec/src/emulation.rs, cli/tests/platform.rs).
    ("qemu-user-static", "/usr/bin/qemu-aarch64-static"),
    // Bridge networks: `ip` makes bridges and veth pairs, `iptables` their NAT
    // (engine/src/networks/commands.rs, cli/tests/networks.rs).
    ("iproute2", "/usr/sbin/ip"),
    ("iptables", "/usr/sbin/iptables"),
    // Rootless containers on `--network bridge` get their network from `pasta`
    // (engine/src/networks/attach.rs, cli/tests/rootless.rs).
    ("passt", "/usr/bin/pasta"),
    // A static UDP echo server for the `-p .../udp` test (cli/tests/ports.rs), as the
    // start benchmark's `/now` (benches/run-container.sh).
    ("gcc", "/usr/bin/gcc"),
    ("libc6-dev", "/usr/lib/x86_64-linux-gnu/libc.a"),
];

/// Where the set-up puts Debian's arm64 `busybox-static` binary, from which the tests make an
/// arm64 base image as they make the amd64 one from `/bin/busybox` (cli/tests/common.rs reads
/// the same path).
const ARM64_BUSYBOX: &str = "/usr/local/lib/kiln-test/arm64/busybox";

/// The test registry's address. Not 5000, which `../shared/peers` uses.
const TEST_REGISTRY: &str = "127.0.0.1:5050";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("demo") => demo(&root),
        Some("test") => test(&root, &args[1..]),
        Some("bench") => bench(&root, &args[1..]),
        Some("differential") => differential::run(&root, &args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <setup|demo|test|bench|differential>");
            eprintln!("  setup   install the Debian packages kiln's demo and tests use");
            eprintln!("  demo    set up, build kiln, build and run testdata/examples/hello");
            eprintln!("  test    set up, start a registry on {TEST_REGISTRY}, run every test");
            eprintln!("  bench   run the whole-build benchmarks in benches/");
            eprintln!("  differential [--cases a,b] [--bless] [--no-buildkit]");
            eprintln!("          build testdata/differential/ with kiln, compare with BuildKit's summaries");
            std::process::exit(2);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{cmd:?}`"))?;
    if !status.success() {
        bail!("`{cmd:?}` failed with {status}");
    }
    Ok(())
}

fn setup() -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask setup` installs Debian packages and kiln's tests need namespaces: run it as root");
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, file)| !Path::new(file).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        println!("xtask: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        // Debian's package may start its own registry on :5000; ours runs on its own port.
    }
    tun_for_everyone()?;
    arm64_busybox()
}

/// `pasta` makes a rootless container's interface with `/dev/net/tun`, which Debian's udev
/// rules make mode 0666; some machines (these VMs among them) leave it 0600, root's only, so
/// the rootless network tests could not run.
fn tun_for_everyone() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tun = Path::new("/dev/net/tun");
    let Ok(meta) = std::fs::metadata(tun) else {
        println!("xtask: no /dev/net/tun: the rootless network tests will say they are skipped");
        return Ok(());
    };
    if meta.permissions().mode() & 0o666 != 0o666 {
        println!("xtask: making /dev/net/tun mode 0666, as Debian's udev rules do");
        std::fs::set_permissions(tun, std::fs::Permissions::from_mode(0o666))
            .context("cannot chmod /dev/net/tun")?;
    }
    Ok(())
}

/// Puts Debian's `busybox-static:arm64` binary at [`ARM64_BUSYBOX`]: downloaded, not installed,
/// so the host's own `/bin/busybox` stays amd64.
fn arm64_busybox() -> Result<()> {
    let target = Path::new(ARM64_BUSYBOX);
    if target.exists() {
        return Ok(());
    }
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .context("cannot run `dpkg`")?;
    if !String::from_utf8_lossy(&foreign.stdout)
        .split_whitespace()
        .any(|a| a == "arm64")
    {
        println!("xtask: adding the arm64 architecture to dpkg for busybox-static:arm64");
        run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
        run(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    let work = tempfile_dir("kiln-arm64-busybox")?;
    let fetched = run(Command::new("apt-get").current_dir(&work).args([
        "download",
        "-qq",
        "busybox-static:arm64",
    ]));
    if fetched.is_err() {
        // The package lists may predate the architecture's addition.
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get").current_dir(&work).args([
            "download",
            "-qq",
            "busybox-static:arm64",
        ]))?;
    }
    let deb = std::fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("`apt-get download busybox-static:arm64` left no .deb")?;
    let tree = work.join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let parent = target.parent().context("ARM64_BUSYBOX has a parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create `{}`", parent.display()))?;
    std::fs::copy(tree.join("bin/busybox"), target)
        .with_context(|| format!("cannot copy the arm64 busybox to `{ARM64_BUSYBOX}`"))?;
    std::fs::remove_dir_all(&work).ok();
    println!("xtask: arm64 busybox-static at {ARM64_BUSYBOX}");
    Ok(())
}

/// A new empty directory under the system's temp dir, readable by apt's `_apt` user.
fn tempfile_dir(prefix: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    Ok(dir)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

fn demo(root: &Path) -> Result<()> {
    setup()?;
    println!("xtask: building kiln (release)");
    run(Command::new("cargo")
        .current_dir(root)
        .args(["build", "--release", "--package", "kiln"]))?;
    let target = target_dir(root);
    let kiln = target.join("release/kiln");
    let work = target.join("demo");
    let store = work.join("store");
    let rootfs = work.join("busybox-rootfs");
    std::fs::create_dir_all(&work)?;
    run(Command::new("sh")
        .arg(root.join("testdata/make-busybox-rootfs.sh"))
        .arg(&rootfs))?;
    let kiln_cmd = |args: &[&str]| {
        let mut c = Command::new(&kiln);
        c.env("KILN_ROOT", &store).args(args);
        c
    };
    println!("\n$ kiln import {} busybox:latest", rootfs.display());
    run(&mut kiln_cmd(&[
        "import",
        "--change",
        "CMD [\"sh\"]",
        rootfs.to_str().context("non-UTF-8 path")?,
        "busybox:latest",
    ]))?;
    let example = root.join("testdata/examples/hello");
    println!("\n$ kiln build -t hello testdata/examples/hello");
    run(&mut kiln_cmd(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "hello",
        example.to_str().context("non-UTF-8 path")?,
    ]))?;
    println!("\n$ kiln images");
    run(&mut kiln_cmd(&["images"]))?;
    println!("\n$ kiln run --rm hello");
    run(&mut kiln_cmd(&["run", "--rm", "hello"]))?;
    Ok(())
}

/// A registry for the tests, stopped when dropped.
struct Registry {
    child: Child,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_registry(work: &Path) -> Result<Registry> {
    let storage = work.join("registry-storage");
    let _ = std::fs::remove_dir_all(&storage);
    std::fs::create_dir_all(&storage)?;
    let config = work.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {TEST_REGISTRY}\n",
            storage.display()
        ),
    )?;
    let log = std::fs::File::create(work.join("registry.log"))?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start `docker-registry`: run `cargo xtask setup`")?;
    let registry = Registry { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(TEST_REGISTRY).is_err() {
        if Instant::now() > deadline {
            bail!(
                "the test registry did not listen on {TEST_REGISTRY} within 20 s: see {}",
                work.join("registry.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(registry)
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    setup()?;
    let work = target_dir(root).join("xtask-test");
    std::fs::create_dir_all(&work)?;
    let _registry = start_registry(&work)?;
    let conformance = root.join("../shared/conformance");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["test", "--workspace"])
        .args(extra)
        .env("KILN_TEST_REGISTRY", TEST_REGISTRY)
        .env("KILN_CONFORMANCE_DIR", &conformance);
    run(&mut cmd)
}

fn bench(root: &Path, extra: &[String]) -> Result<()> {
    let (compile, extra) = split_compile_case(extra);
    if compile {
        bench_compile(root)?;
    }
    let Some(extra) = extra else {
        return Ok(());
    };
    let extra = extra.as_slice();
    setup()?;
    run(Command::new("cargo")
        .current_dir(root)
        .args(["build", "--release", "--package", "kiln"]))?;
    let script = root.join("benches/run.sh");
    if !script.exists() {
        bail!("no benchmark script at {}", script.display());
    }
    run(Command::new("bash")
        .arg(script)
        .args(extra)
        .env("KILN", target_dir(root).join("release/kiln")))
}

/// The `compile` bench case: whether to run it (named in `--cases`, or no `--cases` at all), and
/// the arguments for `benches/run.sh` without it (`None` when no whole-build case is left).
fn split_compile_case(args: &[String]) -> (bool, Option<Vec<String>>) {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return (false, Some(args.to_vec()));
    }
    let Some(i) = args.iter().position(|a| a == "--cases") else {
        return (true, Some(args.to_vec()));
    };
    let Some(list) = args.get(i + 1) else {
        return (false, Some(args.to_vec()));
    };
    let (compile, rest): (Vec<&str>, Vec<&str>) = list.split(',').partition(|c| *c == "compile");
    if rest.is_empty() {
        return (!compile.is_empty(), None);
    }
    let mut out = args.to_vec();
    out[i + 1] = rest.join(",");
    (!compile.is_empty(), Some(out))
}

/// Parse + compile of a 1,000-instruction multi-stage Dockerfile (`benches/compile.rs`, a bench
/// target of kiln-frontend): prints µs per instruction.
fn bench_compile(root: &Path) -> Result<()> {
    println!("xtask: bench case `compile` (benches/compile.rs)");
    run(Command::new("cargo").current_dir(root).args([
        "bench",
        "--quiet",
        "--package",
        "kiln-frontend",
        "--bench",
        "compile",
    ]))
}

#[cfg(test)]
mod tests {
    use super::split_compile_case;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn compile_case_is_split_from_the_whole_build_cases() {
        assert_eq!(
            split_compile_case(&args(&["--runs", "3"])),
            (true, Some(args(&["--runs", "3"])))
        );
        assert_eq!(
            split_compile_case(&args(&["--cases", "compile"])),
            (true, None)
        );
        assert_eq!(
            split_compile_case(&args(&["--cases", "noop,compile", "--no-peers"])),
            (true, Some(args(&["--cases", "noop", "--no-peers"])))
        );
        assert_eq!(
            split_compile_case(&args(&["--cases", "chain"])),
            (false, Some(args(&["--cases", "chain"])))
        );
        assert_eq!(
            split_compile_case(&args(&["--help"])),
            (false, Some(args(&["--help"])))
        );
    }
}
