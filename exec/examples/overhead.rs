//! Measures the sandbox's set-up and tear-down: `true` run N times (default 50) over a rootfs
//! with a fresh upper layer each time, as a `RUN true` step does, and the same with
//! `runc run` of a bundle over the same rootfs when `runc` is installed. Prints the medians.
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

async fn kiln_runs(rootfs: &Path, scratch: &Path, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let dir = scratch.join(format!("kiln-{i}"));
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
            runtime: kiln_exec::Runtime::Builtin,
        };
        let t = Instant::now();
        let outcome = run(config, None).await.expect("sandbox");
        times.push(t.elapsed());
        assert_eq!(outcome.exit_code, 0);
    }
    times
}

fn runc_runs(rootfs: &Path, scratch: &Path, n: usize) -> Option<Vec<Duration>> {
    let bundle = scratch.join("bundle");
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
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let status = std::process::Command::new("runc")
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

fn main() {
    kiln_exec::sandbox_main_if_requested();
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
    let kiln = rt.block_on(kiln_runs(&rootfs, scratch.path(), n));
    println!(
        "kiln sandbox `true`: median {:?} over {n} (min {:?}, max {:?})",
        median(kiln.clone()),
        kiln.iter().min().copied().unwrap_or_default(),
        kiln.iter().max().copied().unwrap_or_default()
    );
    match runc_runs(&rootfs, scratch.path(), n) {
        Some(t) => println!(
            "runc run `true`:     median {:?} over {n} (min {:?}, max {:?})",
            median(t.clone()),
            t.iter().min().copied().unwrap_or_default(),
            t.iter().max().copied().unwrap_or_default()
        ),
        None => println!("runc run: not measured (runc missing or failed)"),
    }
}
