//! The store is kiln's alone and never lies: other users cannot reach it or its device nodes,
//! corrupt blobs are found before they are used (and `kiln check` drops them), a killed pull
//! names no image, and a full disk says so and leaves nothing recorded that prune cannot free.

mod common;

use common::{assert_ok, registry, stderr, stdout, temp_context, unique, Kiln};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The blob file of a digest in a store.
fn blob_path(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The manifest of a stored image, read from the store's OCI layout.
fn manifest(root: &Path, name: &str) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("images/index.json")).unwrap()).unwrap();
    let digest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
        .unwrap_or_else(|| panic!("no image `{name}` in {index}"))["digest"]
        .as_str()
        .unwrap()
        .to_string();
    serde_json::from_slice(&std::fs::read(blob_path(root, &digest)).unwrap()).unwrap()
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = usize::try_from(at).unwrap().min(bytes.len() - 1);
    bytes[i] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

/// Every entry of the store outside snapshot contents (which hold image files as the image
/// has them, `/tmp` at 1777 included).
fn store_entries(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap();
            let in_snapshot = rel.starts_with("snapshots") && rel.components().count() > 2;
            let in_container = rel.starts_with("containers") && rel.components().count() > 2;
            if in_snapshot || in_container {
                continue;
            }
            if m.is_dir() {
                pending.push(p.clone());
            }
            out.push((p, m));
        }
    }
    out
}

fn as_nobody(script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("run setpriv")
}

#[test]
fn store_root_made_by_hand_was_left_open_to_every_user() {
    let k = Kiln::new();
    // As `mkdir -p /var/lib/kiln` makes it.
    std::fs::set_permissions(k.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = k.run(&[
        "import",
        "--change",
        "CMD [\"sh\"]",
        common::busybox_rootfs().to_str().unwrap(),
        "busybox:latest",
    ]);
    assert_ok(&out, "kiln import");
    let ctx = temp_context(
        "kiln-ctx-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN mkdir -m 1777 /shared && echo x > /shared/f\nCOPY Dockerfile /d\n",
        )],
    );
    assert_ok(
        &k.run(&["build", "-t", "app", ctx.path().to_str().unwrap()]),
        "build",
    );
    let mode = std::fs::metadata(k.root.path()).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700, "store root mode {mode:o}");
    let open: Vec<String> = store_entries(k.root.path())
        .into_iter()
        .filter(|(_, m)| !m.file_type().is_symlink() && m.mode() & 0o002 != 0)
        .map(|(p, m)| format!("{} {:o}", p.display(), m.mode() & 0o7777))
        .collect();
    assert!(open.is_empty(), "world-writable in the store: {open:?}");
}

#[test]
fn nobody_wrote_to_a_device_node_of_an_imported_tar() {
    let k = Kiln::new();
    std::fs::set_permissions(k.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = tempfile::tempdir().unwrap();
    let dir = src.path().join("rootfs");
    std::fs::create_dir(&dir).unwrap();
    // /dev/null's numbers: harmless even if the test fails, and the mode a hostile tar gives.
    let made = Command::new("mknod")
        .arg(dir.join("devnode"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::set_permissions(dir.join("devnode"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let tar = src.path().join("dev.tar");
    let tarred = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(tarred.success());
    assert_ok(
        &k.run(&["import", tar.to_str().unwrap(), "devimg"]),
        "import a tar with a device node",
    );
    let nodes: Vec<PathBuf> = std::fs::read_dir(k.root.path().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path().join("fs/devnode"))
        .filter(|p| p.exists())
        .collect();
    assert!(!nodes.is_empty(), "the device node was not unpacked");
    for node in nodes {
        let out = as_nobody(&format!("echo owned > '{}'", node.display()));
        assert!(
            !out.status.success(),
            "`nobody` opened `{}` in the store",
            node.display()
        );
    }
}

/// A flipped byte in the middle of busybox's uncompressed layer (inside the busybox binary).
fn corrupt_busybox_layer(k: &Kiln) -> String {
    let m = manifest(k.root.path(), "docker.io/library/busybox:latest");
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let path = blob_path(k.root.path(), &layer);
    let len = std::fs::metadata(&path).unwrap().len();
    flip_byte(&path, len / 2);
    layer
}

#[test]
fn a_flipped_byte_in_a_layer_blob_was_used_by_run_and_from() {
    let k = Kiln::with_busybox();
    let layer = corrupt_busybox_layer(&k);
    let out = k.run(&["run", "--rm", "busybox", "true"]);
    assert!(!out.status.success(), "kiln run used a corrupt layer");
    let err = stderr(&out);
    assert!(
        err.contains(&layer) && err.contains("corrupt") && err.contains("kiln check"),
        "{err}"
    );
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    let out = k.run(&["build", "--progress", "plain", ctx.path().to_str().unwrap()]);
    assert!(!out.status.success(), "FROM used a corrupt layer");
    let err = stderr(&out);
    assert!(err.contains(&layer) && err.contains("kiln check"), "{err}");
    // Nothing was unpacked from it: only the import's own snapshot is recorded.
    let snaps = std::fs::read_dir(k.root.path().join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(snaps, 1, "a snapshot of the corrupt layer was kept");
}

#[test]
fn an_edited_config_blob_was_not_detected() {
    let k = Kiln::with_busybox();
    let m = manifest(k.root.path(), "docker.io/library/busybox:latest");
    let config = m["config"]["digest"].as_str().unwrap().to_string();
    let path = blob_path(k.root.path(), &config);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"sh\""), "{text}");
    std::fs::write(&path, text.replace("\"sh\"", "\"id\"")).unwrap();
    let out = k.run(&["run", "--rm", "busybox"]);
    assert!(!out.status.success(), "kiln run used an edited config");
    let err = stderr(&out);
    assert!(err.contains(&config) && err.contains("kiln check"), "{err}");
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", "FROM busybox\nRUN true\n")]);
    let out = k.run(&["build", ctx.path().to_str().unwrap()]);
    assert!(!out.status.success(), "FROM used an edited config");
    assert!(stderr(&out).contains(&config), "{}", stderr(&out));
}

#[test]
fn kiln_check_drops_a_corrupt_blob_and_the_image_and_a_pull_recovers() {
    let (reg, _guard) = registry();
    let k = Kiln::with_busybox();
    let out = k.run(&["check"]);
    assert_ok(&out, "check of a sound store");
    assert!(stdout(&out).contains("0 corrupt"), "{}", stdout(&out));
    let remote = format!("{reg}/{}:v1", unique("check"));
    assert_ok(&k.run(&["push", "busybox", &remote]), "push");

    let k2 = Kiln::new();
    assert_ok(&k2.run(&["pull", &remote]), "pull");
    let name = remote.clone();
    let m = manifest(k2.root.path(), &name);
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let path = blob_path(k2.root.path(), &layer);
    flip_byte(&path, std::fs::metadata(&path).unwrap().len() / 2);

    let out = k2.run(&["check"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report = stdout(&out);
    assert!(
        report.contains(&format!("corrupt blob `{layer}`")) && report.contains(&name),
        "{report}"
    );
    assert!(!path.exists(), "the corrupt blob was kept");
    let listed = stdout(&k2.run(&["images"]));
    assert!(!listed.contains(&name), "{listed}");
    assert_ok(&k2.run(&["check"]), "a second check finds nothing");

    assert_ok(&k2.run(&["pull", &remote]), "pull again");
    let out = k2.run(&["run", "--rm", &remote, "echo", "recovered"]);
    assert_ok(&out, "run the pulled image");
    assert!(stdout(&out).contains("recovered"));
}

#[test]
fn a_push_of_a_corrupt_blob_said_pushed() {
    let (reg, _guard) = registry();
    let k = Kiln::with_busybox();
    let layer = corrupt_busybox_layer(&k);
    // The store keeps the layer uncompressed; the push compresses it first. Corrupt the blob
    // the push reads: make it compress now, then corrupt the compressed one.
    let remote = format!("{reg}/{}:v1", unique("corrupt-push"));
    let out = k.run(&["push", "--progress", "plain", "busybox", &remote]);
    assert!(!out.status.success(), "a corrupt layer was pushed");
    let err = stderr(&out);
    assert!(err.contains(&layer) && err.contains("kiln check"), "{err}");
    assert!(!err.contains("pushed"), "{err}");

    // A pulled (gzip) layer is pushed as it is stored: the upload hashes what it reads and stops
    // before the registry completes it, and no `pushed` line is printed for it.
    let k = Kiln::with_busybox();
    assert_ok(&k.run(&["push", "busybox", &remote]), "push a sound image");
    let k2 = Kiln::new();
    assert_ok(&k2.run(&["pull", &remote]), "pull");
    let m = manifest(k2.root.path(), &remote);
    let gz = m["layers"][0]["digest"].as_str().unwrap().to_string();
    let path = blob_path(k2.root.path(), &gz);
    flip_byte(&path, std::fs::metadata(&path).unwrap().len() / 2);
    // Another registry, which holds none of the blobs, so the layer is uploaded.
    let other = common::RegistryGuard::start();
    let dest = format!("{}/{}:v1", other.addr, unique("corrupt-upload"));
    let out = k2.run(&["push", "--progress", "plain", &remote, &dest]);
    assert!(!out.status.success(), "a corrupt gzip layer was pushed");
    let err = stderr(&out);
    assert!(
        err.contains(&gz) && err.contains("corrupt") && err.contains("kiln check"),
        "{err}"
    );
    let short = &gz["sha256:".len().."sha256:".len() + 12];
    assert!(
        !err.contains(&format!("pushed {short}")),
        "announced as pushed: {err}"
    );
}

/// A tmpfs of `mb` MiB mounted on a new directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(mb: u32) -> Tmpfs {
        let dir = tempfile::Builder::new()
            .prefix("kiln-tmpfs-")
            .tempdir()
            .unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount a tmpfs (the tests run as root)");
        Tmpfs { dir }
    }

    fn resize(&self, mb: u32) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={mb}m")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn kiln(&self) -> Kiln {
        Kiln {
            root: tempfile::Builder::new()
                .prefix("store-")
                .tempdir_in(self.dir.path())
                .unwrap(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn snapshot_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("snapshots")).unwrap().count()
}

#[test]
fn disk_full_while_saving_a_layer_left_a_snapshot_prune_could_not_free() {
    let fs = Tmpfs::new(20);
    let k = fs.kiln();
    assert_ok(
        &k.run(&[
            "import",
            "--change",
            "CMD [\"sh\"]",
            common::busybox_rootfs().to_str().unwrap(),
            "busybox:latest",
        ]),
        "import",
    );
    let ctx = temp_context(
        "kiln-ctx-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN dd if=/dev/urandom of=/big bs=1M count=8\n",
        )],
    );
    let out = k.run(&["build", "-t", "big", ctx.path().to_str().unwrap()]);
    assert!(!out.status.success(), "the build fit after all");
    let err = stderr(&out);
    assert!(
        err.contains("is full") && err.contains(&k.root.path().display().to_string()),
        "{err}"
    );
    assert!(!err.contains("permissions"), "{err}");
    assert_eq!(
        std::fs::read_dir(k.root.path().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    let out = k.run(&["prune"]);
    assert_ok(&out, "prune");
    assert_eq!(snapshot_count(k.root.path()), 0, "{}", stdout(&out));
    fs.resize(60);
    let out = k.run(&["build", "-t", "big", ctx.path().to_str().unwrap()]);
    assert_ok(&out, "the build with room");
}

/// Pushes an image with one 120 MiB layer of deterministic noise (compression cannot shrink
/// it, and every run pushes the same blob) and returns its reference.
fn push_big_image(reg: &str) -> String {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-ctx-",
        &[("Dockerfile", "FROM busybox\nCOPY noise /noise\n")],
    );
    let mut noise = vec![0u8; 120 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in noise.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let path = ctx.path().join("noise");
    std::fs::write(&path, &noise).unwrap();
    let ok = Command::new("touch")
        .args(["-d", "@1700000000"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(ok.success());
    assert_ok(
        &k.run(&["build", "-t", "big", ctx.path().to_str().unwrap()]),
        "build the big image",
    );
    let remote = format!("{reg}/kiln-test-big-noise:{}", unique("v"));
    assert_ok(&k.run(&["push", "big", &remote]), "push the big image");
    remote
}

#[test]
fn disk_full_during_a_pull_said_broken_pipe() {
    let (reg, _guard) = registry();
    let remote = push_big_image(&reg);
    let fs = Tmpfs::new(40);
    let k = fs.kiln();
    let out = k.run(&["pull", &remote]);
    assert!(!out.status.success(), "the pull fit after all");
    let err = stderr(&out);
    assert!(err.contains("the disk is full"), "{err}");
    assert!(!err.contains("broken pipe"), "{err}");
    assert!(!stdout(&k.run(&["images"])).contains("noise"));
    assert_eq!(
        std::fs::read_dir(k.root.path().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    fs.resize(400);
    assert_ok(&k.run(&["pull", &remote]), "the pull with room");
}

#[test]
fn a_pull_killed_mid_layer_listed_an_image_whose_layer_is_missing() {
    let (reg, _guard) = registry();
    let remote = push_big_image(&reg);
    let k = Kiln::new();
    let mut child = k.cmd().args(["pull", &remote]).spawn().unwrap();
    // Kill it while the layer is being written to the store's staging directory.
    let tmp = k.root.path().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let growing = std::fs::read_dir(&tmp)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.metadata().is_ok_and(|m| m.len() > (1 << 20)))
            })
            .unwrap_or(false);
        if growing {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pull ended before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "the layer download never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let listed = stdout(&k.run(&["images"]));
    assert!(
        !listed.contains("kiln-test-big-noise"),
        "an image without its layer is listed:\n{listed}"
    );
    assert_ok(&k.run(&["pull", &remote]), "pull again");
    let out = k.run(&["run", "--rm", &remote, "wc", "-c", "/noise"]);
    assert_ok(&out, "run the pulled image");
    assert!(stdout(&out).contains(&(120u64 << 20).to_string()));
}

#[test]
fn a_corrupt_blob_was_copied_into_oci_and_docker_archives() {
    let k = Kiln::with_busybox();
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", "FROM busybox\nLABEL a=b\n")]);
    let ctx = ctx.path().to_str().unwrap().to_string();
    assert_ok(&k.run(&["build", "-t", "app", &ctx]), "build");
    // The base is unpacked and cached now; its stored blob goes into the archives as it is.
    let layer = corrupt_busybox_layer(&k);
    let out_dir = tempfile::tempdir().unwrap();
    for kind in ["oci", "docker"] {
        let dest = out_dir.path().join(format!("{kind}.tar"));
        let out = k.run(&[
            "build",
            "-o",
            &format!("type={kind},dest={}", dest.display()),
            &ctx,
        ]);
        assert!(
            !out.status.success(),
            "a corrupt layer went into the {kind} archive"
        );
        let err = stderr(&out);
        assert!(
            err.contains(&layer) && err.contains("kiln check"),
            "{kind}: {err}"
        );
        assert!(!dest.exists(), "{kind}: a broken archive was left");
    }
}
