//! Two concurrent builds of the same Dockerfile in one engine share the step they both need: it
//! runs once (its output is random, so a second run would give another image) and both builds
//! get its result and see its progress.
//!
//! A test binary of its own (`harness = false`): the engine's sandbox re-executes the current
//! binary, so `main` must hand over to the sandbox first thing, as kiln's own `main` does.

use kiln_engine::{BuildRequest, Engine, EngineOptions, Event, ImportRequest, ProgressSink};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Collect(Mutex<Vec<Event>>);

impl ProgressSink for Collect {
    fn event(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }
}

impl Collect {
    /// (started, done, cached) counts of the steps whose name contains `part`.
    fn counts(&self, part: &str) -> (usize, usize, usize) {
        let events = self.0.lock().unwrap();
        let mut c = (0, 0, 0);
        for e in events.iter() {
            match e {
                Event::Started { name, .. } if name.contains(part) => c.0 += 1,
                Event::Done { name, .. } if name.contains(part) => c.1 += 1,
                Event::Cached { name, .. } if name.contains(part) => c.2 += 1,
                _ => {}
            }
        }
        c
    }

    fn saw_output(&self, text: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Log { data, .. } if String::from_utf8_lossy(data).contains(text)))
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() {
    kiln_exec::sandbox_main_if_requested();
    let tmp = TempDir(
        std::env::temp_dir().join(format!("kiln-engine-concurrent-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&tmp.0);
    std::fs::create_dir_all(&tmp.0).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(concurrent_builds_share_the_running_step(&tmp.0));
    println!("test concurrent_builds_share_the_running_step ... ok");
}

async fn concurrent_builds_share_the_running_step(tmp: &Path) {
    let rootfs = tmp.join("rootfs");
    let status = std::process::Command::new("sh")
        .arg(workspace().join("testdata/make-busybox-rootfs.sh"))
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "make-busybox-rootfs.sh failed: install busybox-static"
    );
    let engine = Engine::open(
        &tmp.join("store"),
        EngineOptions {
            jobs: 4,
            ..Default::default()
        },
    )
    .unwrap();
    engine
        .import(ImportRequest {
            source: rootfs,
            name: "busybox:latest".into(),
            changes: vec![],
            platform: None,
        })
        .await
        .unwrap();
    let ctx = tmp.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN sleep 1 && echo shared-step-output && head -c 32 /dev/urandom | od -An -tx1 > /rand\n",
    )
    .unwrap();
    let req = BuildRequest {
        context: ctx.clone(),
        ..Default::default()
    };
    let a = Arc::new(Collect::default());
    let b = Arc::new(Collect::default());
    let (ra, rb) = tokio::join!(
        engine.build(req.clone(), a.clone()),
        engine.build(req.clone(), b.clone())
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        ra.manifest_digest, rb.manifest_digest,
        "the random step ran twice: the builds got different images"
    );
    for (who, sink) in [("first", &a), ("second", &b)] {
        let (started, done, cached) = sink.counts("shared-step-output");
        assert_eq!(
            (started, done, cached),
            (1, 1, 0),
            "the {who} build's progress of the shared step"
        );
        assert!(
            sink.saw_output("shared-step-output"),
            "the {who} build saw none of the shared step's output"
        );
    }
    // Afterwards the result is simply cached.
    let c = Arc::new(Collect::default());
    let rc = engine.build(req, c.clone()).await.unwrap();
    assert_eq!(rc.manifest_digest, ra.manifest_digest);
    assert_eq!(rc.executed, 0);
    assert_eq!(c.counts("shared-step-output"), (0, 0, 1));
}
