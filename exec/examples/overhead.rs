//! Measures the sandbox's set-up and tear-down: `true` run N times (default 50) over a rootfs
//! with a fresh upper layer each time, as a `RUN true` step does, with the built-in sandbox and
//! with kiln's `--runtime runc|crun` (overlay, bundle, tini as init); then bare `runc run` and
//! `crun run` of a bundle over the same rootfs, when installed. Prints the medians.
//!
//! On a hybrid cgroup host the process first moves into a mount namespace of its own that hides
//! the cgroup v2 controllers from crun, as kiln does for its crun runs (`exec/src/oci/cgroups.rs`).
//!
//! `cargo run --release -p kiln-exec --example overhead -- ROOTFS [N]` (as root; ROOTFS e.g.
//! from `testdata/make-busybox-rootfs.sh`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_exec::{
    default_spec, run, Network, ProcessSpec, ResolvedUser, RootFs, SandboxConfig, Stdio,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn process() -> ProcessSpec {
    ProcessSpec {
        args: vec!["/bin/true".into()],
        env: vec![],
        cwd: "/".into(),
        user: ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            home: "/root".into(),
        },
        hostname: "kiln".into(),
        network: Network::Host,
        terminal: false,
    }
}

async fn kiln_runs(
    rootfs: &Path,
    scratch: &Path,
    n: usize,
    runtime: &kiln_exec::Runtime,
) -> Result<Vec<Duration>, kiln_exec::ExecError> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let dir = scratch.join(format!("kiln-{runtime}-{i}"));
        let (upper, work, target, state) = (
            dir.join("upper"),
            dir.join("work"),
            dir.join("rootfs"),
            dir.join("state"),
        );
        for d in [&upper, &work, &target, &state] {
            std::fs::create_dir_all(d).expect("create scratch dirs");
        }
        let config = SandboxConfig {
            spec: default_spec(&process()).expect("spec"),
            rootfs: RootFs {
                lower: vec![rootfs.to_path_buf()],
                upper: Some(upper),
                work: Some(work),
                target,
            },
            network: Network::Host,
            stdio: Stdio::Null,
            state_dir: state,
            runtime: runtime.clone(),
        };
        let t = Instant::now();
        let outcome = run(config, None).await?;
        times.push(t.elapsed());
        assert_eq!(outcome.exit_code, 0);
    }
    Ok(times)
}

/// `BINARY run` of a bundle made by `runc spec` (both runtimes read it), `n` times.
fn bare_runs(binary: &str, rootfs: &Path, scratch: &Path, n: usize) -> Option<Vec<Duration>> {
    let bundle = scratch.join(format!("bundle-{binary}"));
    std::fs::create_dir_all(&bundle).ok()?;
    let status = std::process::Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    config["process"]["args"] = serde_json::json!(["/bin/true"]);
    config["process"]["terminal"] = serde_json::json!(false);
    config["root"]["path"] = serde_json::json!(rootfs);
    config["root"]["readonly"] = serde_json::json!(true);
    std::fs::write(&path, serde_json::to_vec(&config).ok()?).ok()?;
    // As kiln runs crun: no cgroup manager (kiln's steps get no cgroup of their own).
    let global: &[&str] = if binary == "crun" {
        &["--cgroup-manager=disabled"]
    } else {
        &[]
    };
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let status = std::process::Command::new(binary)
            .args(global)
            .arg("run")
            .arg("--bundle")
            .arg(&bundle)
            .arg(format!("kiln-overhead-{}-{i}", std::process::id()))
            .stdin(std::process::Stdio::null())
            .status()
            .ok()?;
        times.push(t.elapsed());
        if !status.success() {
            return None;
        }
    }
    Some(times)
}

fn print(what: &str, n: usize, times: &[Duration]) {
    println!(
        "{what:<28} median {:>9.2?} over {n} (min {:.2?}, max {:.2?})",
        median(times.to_vec()),
        times.iter().min().copied().unwrap_or_default(),
        times.iter().max().copied().unwrap_or_default()
    );
}

/// On a hybrid cgroup host (v1 hierarchies on a tmpfs, v2 at `unified` with controllers), move
/// into a private mount namespace with the v2 controllers hidden, so that bare crun starts.
fn hide_v2_controllers_if_hybrid() {
    let controllers = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    let enabled = std::fs::read_to_string(controllers).is_ok_and(|c| !c.trim().is_empty());
    if !enabled {
        return;
    }
    // Single-threaded still: the tokio runtime is built after this.
    let done = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_ok()
        && nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .is_ok()
        && nix::mount::mount(
            Some("/dev/null"),
            controllers,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .is_ok();
    println!(
        "hybrid cgroup host: v2 controllers hidden from bare crun: {}",
        if done { "yes" } else { "no (crun may fail)" }
    );
}

fn main() {
    kiln_exec::sandbox_main_if_requested();
    hide_v2_controllers_if_hybrid();
    let mut args = std::env::args().skip(1);
    let Some(rootfs) = args.next().map(PathBuf::from) else {
        eprintln!("usage: overhead ROOTFS [N]");
        std::process::exit(2);
    };
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let scratch = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let runtimes = [
        kiln_exec::Runtime::Builtin,
        kiln_exec::Runtime::Oci("runc".into()),
        kiln_exec::Runtime::Oci("crun".into()),
    ];
    for runtime in &runtimes {
        match rt.block_on(kiln_runs(&rootfs, scratch.path(), n, runtime)) {
            Ok(t) => print(&format!("kiln `true`, {runtime}:"), n, &t),
            Err(e) => println!("kiln `true`, {runtime}: not measured: {e}"),
        }
    }
    for binary in ["runc", "crun"] {
        match bare_runs(binary, &rootfs, scratch.path(), n) {
            Some(t) => print(&format!("bare `{binary} run` `true`:"), n, &t),
            None => println!("bare `{binary} run`: not measured ({binary} missing or failed)"),
        }
    }
}
