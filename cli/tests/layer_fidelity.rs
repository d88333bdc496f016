//! Layers hold only what changed, as BuildKit's overlay differ writes them: copied-up files and
//! directories equal to the lower ones, whiteouts of names nothing below has and opaque markers
//! on directories nothing below has are left out, and the layers still apply to the right tree.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// One layer's entries: tar path → (entry type, content).
type Layer = BTreeMap<String, (tar::EntryType, Vec<u8>)>;

/// Builds `dockerfile` over `files` and returns the image's layers, read from `-o type=oci`,
/// with the path of the archive (kept in `dir`).
fn build_layers(k: &Kiln, dir: &Path, dockerfile: &str, files: &[(&str, &str)]) -> Vec<Layer> {
    let mut all = vec![("Dockerfile", dockerfile)];
    all.extend_from_slice(files);
    let ctx = dir.join("ctx");
    for (name, text) in &all {
        let p = ctx.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let oci = dir.join("oci.tar");
    let rootfs = dir.join("rootfs");
    let out = k.run(&[
        "build",
        "-o",
        &format!("type=oci,dest={}", oci.display()),
        "-o",
        &format!("type=local,dest={}", rootfs.display()),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&out, "kiln build");
    read_oci_layers(&oci)
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn read_oci_layers(archive: &Path) -> Vec<Layer> {
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        blobs.insert(name.trim_start_matches("./").to_string(), data);
    }
    let blob = |digest: &str| -> &Vec<u8> {
        let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        blobs
            .get(&path)
            .unwrap_or_else(|| panic!("no `{path}` in the archive"))
    };
    let index: serde_json::Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(blob(mdigest)).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let bytes = blob(l["digest"].as_str().unwrap());
            let media = l["mediaType"].as_str().unwrap();
            let tar_bytes = if media.ends_with("gzip") {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_end(&mut out)
                    .unwrap();
                out
            } else {
                bytes.clone()
            };
            let mut layer = Layer::new();
            let mut ar = tar::Archive::new(&tar_bytes[..]);
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let kind = e.header().entry_type();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                layer.insert(path, (kind, data));
            }
            layer
        })
        .collect()
}

fn names(layer: &Layer) -> Vec<&str> {
    layer.keys().map(String::as_str).collect()
}

#[test]
fn copy_of_the_context_after_its_lock_file_put_the_unchanged_lock_file_in_the_layer_again() {
    let k = Kiln::with_busybox();
    let t = tempfile::tempdir().unwrap();
    let layers = build_layers(
        &k,
        t.path(),
        "FROM busybox\nCOPY requirements.txt /app/\nCOPY . /app\n",
        &[
            ("requirements.txt", "flask==3.0\n"),
            ("main.py", "print(1)\n"),
        ],
    );
    let first = &layers[layers.len() - 2];
    let last = layers.last().unwrap();
    assert!(
        first.contains_key("app/requirements.txt"),
        "{:?}",
        names(first)
    );
    assert!(last.contains_key("app/main.py"), "{:?}", names(last));
    assert!(
        !last.contains_key("app/requirements.txt"),
        "the unchanged `app/requirements.txt` is in the second COPY's layer again: {:?}",
        names(last)
    );
    // The directory that holds the new files is written before them, as BuildKit's writer does.
    assert!(last.contains_key("app/"), "{:?}", names(last));
    let rootfs = t.path().join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("app/requirements.txt")).unwrap(),
        "flask==3.0\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("app/main.py")).unwrap(),
        "print(1)\n"
    );
}

#[test]
fn run_that_cleaned_up_its_temp_files_put_tmp_in_the_layer() {
    let k = Kiln::with_busybox();
    let t = tempfile::tempdir().unwrap();
    let layers = build_layers(
        &k,
        t.path(),
        "FROM busybox\nRUN echo x > /tmp/scratch && mkdir /tmp/d && rm -rf /tmp/scratch /tmp/d && echo hi > /hello\n",
        &[],
    );
    let last = layers.last().unwrap();
    assert!(last.contains_key("hello"), "{:?}", names(last));
    assert!(
        !last.keys().any(|p| p.starts_with("tmp")),
        "`/tmp`, only its mtime changed, is in the layer: {:?}",
        names(last)
    );
}

#[test]
fn new_directories_got_opaque_markers_that_hide_nothing() {
    let k = Kiln::with_busybox();
    let t = tempfile::tempdir().unwrap();
    // `/newdir` never existed; `/gone` was deleted in an earlier step; `/thing` was a file, and
    // overlayfs marks the directory made in its place opaque (it is created over the file's
    // whiteout), though no lower layer has a directory there to hide.
    let layers = build_layers(
        &k,
        t.path(),
        "FROM busybox\n\
         RUN mkdir -p /gone/sub && touch /gone/sub/f && echo x > /thing\n\
         RUN rm -rf /gone\n\
         RUN mkdir /newdir && touch /newdir/f && mkdir /gone && touch /gone/g \\\n\
             && rm /thing && mkdir /thing && touch /thing/t\n",
        &[],
    );
    let last = layers.last().unwrap();
    for p in ["newdir/f", "gone/g", "thing/t"] {
        assert!(last.contains_key(p), "{p}: {:?}", names(last));
    }
    let markers: Vec<&str> = names(last)
        .into_iter()
        .filter(|p| p.ends_with(".wh..wh..opq"))
        .collect();
    assert!(
        markers.is_empty(),
        "opaque markers on directories no lower layer has: {markers:?}"
    );
    let rootfs = t.path().join("rootfs");
    let ls = |d: &str| entries(&rootfs.join(d));
    assert_eq!(ls("gone"), ["g"]);
    assert_eq!(ls("newdir"), ["f"]);
    assert_eq!(ls("thing"), ["t"]);
}

#[test]
fn directory_made_again_over_an_existing_one_lost_its_opaque_marker() {
    let k = Kiln::with_busybox();
    let t = tempfile::tempdir().unwrap();
    let layers = build_layers(
        &k,
        t.path(),
        "FROM busybox\n\
         RUN mkdir -p /dir/sub && touch /dir/a /dir/sub/b\n\
         RUN rm -rf /dir && mkdir /dir && touch /dir/c\n",
        &[],
    );
    let last = layers.last().unwrap();
    // The new `/dir` has the old one's mode and owner: its entry is there all the same, with a
    // whiteout per old name it no longer holds, as BuildKit's differ writes it (not the opaque
    // marker overlayfs keeps: the whiteout-dir-recreate differential case).
    assert_eq!(
        names(last),
        ["dir/", "dir/.wh.a", "dir/.wh.sub", "dir/c"],
        "the layer of the re-made `/dir`"
    );
    // Applied in order by another tool, the layers give the right tree.
    let layout = t.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    let out = std::process::Command::new("tar")
        .args(["-xf", t.path().join("oci.tar").to_str().unwrap(), "-C"])
        .arg(&layout)
        .output()
        .unwrap();
    assert_ok(&out, "tar -x of the OCI archive");
    if installed("umoci", "umoci") {
        let bundle = t.path().join("bundle");
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        // umoci names an image by a tag; give the manifest one.
        let mut index = index;
        index["manifests"][0]["annotations"] =
            serde_json::json!({"org.opencontainers.image.ref.name": "fidelity"});
        std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
        tool(
            "umoci",
            &[
                "unpack",
                "--image",
                &format!("{}:fidelity", layout.display()),
                bundle.to_str().unwrap(),
            ],
        );
        assert_eq!(
            entries(&bundle.join("rootfs/dir")),
            ["c"],
            "umoci's tree (manifest {digest})"
        );
    }
    assert_eq!(entries(&t.path().join("rootfs/dir")), ["c"]);
}

#[test]
fn copied_up_file_with_new_content_but_the_same_size_and_mtime_was_left_out() {
    let k = Kiln::with_busybox();
    let t = tempfile::tempdir().unwrap();
    let layers = build_layers(
        &k,
        t.path(),
        "FROM busybox\n\
         RUN printf aaaa > /f && touch -d @1600000000 /f && printf same > /g && touch -d @1600000000 /g\n\
         RUN printf bbbb > /f && touch -d @1600000000 /f && printf same > /g && touch -d @1600000000 /g\n",
        &[],
    );
    let last = layers.last().unwrap();
    let (_, data) = last
        .get("f")
        .unwrap_or_else(|| panic!("the changed `/f` is missing: {:?}", names(last)));
    assert_eq!(data, b"bbbb");
    assert!(
        !last.contains_key("g"),
        "the rewritten but equal `/g` is in the layer: {:?}",
        names(last)
    );
}

#[test]
fn copy_link_layer_depended_on_the_base_it_was_merged_onto() {
    let k = Kiln::with_busybox();
    let last_layer = |base_step: &str, name: &str| {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let layers = build_layers(
            &k,
            &dir,
            &format!("FROM busybox\n{base_step}\nCOPY --link a.txt /app/\n"),
            &[("a.txt", "a\n")],
        );
        layers.last().unwrap().clone()
    };
    // With `/app` in the base or not, the linked layer is the same: a diff against nothing.
    let with_app = last_layer("RUN mkdir /app", "with");
    let without = last_layer("RUN mkdir /other", "without");
    assert!(with_app.contains_key("app/"), "{:?}", names(&with_app));
    assert!(with_app.contains_key("app/a.txt"), "{:?}", names(&with_app));
    assert_eq!(names(&with_app), names(&without));
}

/// A `RUN` or `WORKDIR` that changed nothing lost its layer (and its history entry was marked
/// `empty_layer`, Docker's legacy builder's rule); BuildKit keeps the empty layer, the empty
/// tar, gzipped to the blob its images share. Config-only steps still have no layer.
#[test]
fn step_that_changed_nothing_lost_its_empty_layer() {
    const EMPTY_TAR: &str =
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
    const EMPTY_GZIP: &str =
        "sha256:4f4fb700ef54461cfa02571ae0db9a0dc1e0cdb5577484a6d75e68dc38e8acc1";
    let k = Kiln::with_busybox();
    let t = tempfile::tempdir().unwrap();
    let layers = build_layers(
        &k,
        t.path(),
        "FROM busybox\nRUN true\nENV X=1\nWORKDIR /tmp\n",
        &[],
    );
    assert_eq!(layers.len(), 3, "the base, `RUN true` and `WORKDIR /tmp`");
    assert!(layers[1].is_empty() && layers[2].is_empty());
    let oci = format!("oci-archive:{}", t.path().join("oci.tar").display());
    let manifest: serde_json::Value =
        serde_json::from_str(&tool("skopeo", &["inspect", "--raw", &oci])).unwrap();
    assert_eq!(manifest["layers"][1]["digest"], EMPTY_GZIP, "{manifest}");
    assert_eq!(manifest["layers"][2]["digest"], EMPTY_GZIP, "{manifest}");
    let config: serde_json::Value =
        serde_json::from_str(&tool("skopeo", &["inspect", "--config", &oci])).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(diff_ids[1..], [EMPTY_TAR, EMPTY_TAR]);
    let history: Vec<(String, bool)> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["created_by"].as_str().unwrap_or_default().to_string(),
                h["empty_layer"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let marked: Vec<bool> = history.iter().map(|(_, e)| *e).collect();
    assert_eq!(marked, [false, false, true, false], "{history:?}");
}
