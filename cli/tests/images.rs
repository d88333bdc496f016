//! The image commands end to end: `tag`, `rmi`, `images --filter`, `image prune`, `image
//! inspect`, `history`, `save` and `load`, checked with skopeo and umoci where they can read
//! what kiln wrote.

mod common;

use common::*;
use std::path::Path;

/// Builds `Dockerfile` text as `name` and returns the image ID (config digest).
fn build_as(k: &Kiln, name: &str, dockerfile: &str) -> String {
    let ctx = temp_context("kiln-img-", &[("Dockerfile", dockerfile)]);
    let iid = ctx.path().join("iid");
    let out = build(
        k,
        ctx.path(),
        &["-t", name, "--iidfile", iid.to_str().unwrap()],
    );
    assert_ok(&out, &format!("build {name}"));
    std::fs::read_to_string(iid).unwrap()
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::to_string).collect()
}

/// The NAME column of `kiln images ARGS`.
fn names(k: &Kiln, args: &[&str]) -> Vec<String> {
    let mut all = vec!["images"];
    all.extend_from_slice(args);
    let out = k.run(&all);
    assert_ok(&out, "kiln images");
    stdout(&out)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn inspect(k: &Kiln, image: &str) -> serde_json::Value {
    let out = k.run(&["image", "inspect", image]);
    assert_ok(&out, &format!("kiln image inspect {image}"));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    v[0].clone()
}

#[test]
fn a_rebuilt_tag_leaves_a_dangling_image_that_filters_and_prune_see() {
    let k = Kiln::with_busybox();
    let first = build_as(&k, "app:1", "FROM busybox\nRUN echo one > /v\n");
    let second = build_as(&k, "app:1", "FROM busybox\nRUN echo two > /v\n");
    assert_ne!(first, second);
    // `-q` prints IDs as Docker does: 12 hex digits, or whole with `--no-trunc`.
    let dangling = stdout(&k.run(&["images", "-q", "--filter", "dangling=true"]));
    assert_eq!(lines(&dangling), vec![first[7..19].to_string()]);
    let whole = stdout(&k.run(&["images", "-q", "--no-trunc", "--filter", "dangling=true"]));
    assert_eq!(lines(&whole), vec![first.clone()]);
    let named = stdout(&k.run(&["images", "-q", "--filter", "dangling=false"]));
    assert_eq!(
        lines(&named),
        vec![
            second[7..19].to_string(),
            inspect(&k, "busybox")["Id"].as_str().unwrap()[7..19].to_string()
        ]
    );
    assert_eq!(
        names(&k, &["--filter", "dangling=false"]),
        [
            "docker.io/library/app:1",
            "docker.io/library/busybox:latest"
        ]
    );
    let listed = stdout(&k.run(&["images"]));
    assert!(listed.contains("<none>"), "{listed}");
    // The store's layout stays readable by umoci with a dangling entry in it.
    if installed("umoci", "umoci") {
        let layout = k.root.path().join("images");
        let tags = tool("umoci", &["ls", "--layout", layout.to_str().unwrap()]);
        assert!(tags.contains("docker.io/library/app:1"), "{tags}");
    }
    // The dangling image is still an image: it runs by ID.
    let out = k.run(&["image", "inspect", &first[7..19]]);
    assert_ok(&out, "inspect the dangling image by a short ID");
    let out = k.run(&["image", "prune", "-f"]);
    assert_ok(&out, "kiln image prune");
    assert!(stdout(&out).contains(&format!("deleted: {first}")));
    assert_eq!(
        stdout(&k.run(&["images", "-q", "--filter", "dangling=true"])),
        ""
    );
    assert_eq!(inspect(&k, "app:1")["Id"], second);
}

#[test]
fn tag_and_rmi_untag_first_and_delete_with_the_last_name() {
    let k = Kiln::with_busybox();
    let id = build_as(&k, "app:1", "FROM busybox\nRUN echo x > /x\n");
    assert_ok(&k.run(&["tag", "app:1", "me/other:2"]), "kiln tag");
    assert_ok(
        &k.run(&["tag", &id[7..19], "third"]),
        "kiln tag by short ID",
    );
    let v = inspect(&k, "me/other:2");
    assert_eq!(v["Id"], id);
    assert_eq!(
        v["RepoTags"],
        serde_json::json!(["app:1", "me/other:2", "third:latest"])
    );
    assert_eq!(
        names(&k, &["--filter", "reference=me/*"]),
        ["docker.io/me/other:2"]
    );
    assert_eq!(
        names(&k, &["--filter", "reference=app"]),
        ["docker.io/library/app:1"]
    );

    // By ID, an image with several names stays unless forced.
    let out = k.run(&["rmi", &id]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("several names") && err.contains("-f"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = k.run(&["rmi", "third"]);
    assert_ok(&out, "kiln rmi third");
    assert_eq!(stdout(&out), "Untagged: third:latest\n");
    let out = k.run(&["rmi", "-f", &id]);
    assert_ok(&out, "kiln rmi -f ID");
    assert_eq!(
        stdout(&out),
        format!("Untagged: app:1\nUntagged: me/other:2\nDeleted: {id}\n")
    );
    assert_eq!(names(&k, &[]), ["docker.io/library/busybox:latest"]);

    // Unknown names: one line each, the others still removed, exit code 1.
    assert_ok(&k.run(&["tag", "busybox", "spare"]), "tag spare");
    let out = k.run(&["rmi", "nope", "spare"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: no such image: `nope` (see `kiln images`)\n"
    );
    assert_eq!(stdout(&out), "Untagged: spare:latest\n");
    let out = k.run(&["tag", "nope", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

#[test]
fn rmi_keeps_an_image_a_container_was_made_from() {
    let k = Kiln::with_busybox();
    build_as(&k, "app:1", "FROM busybox\nRUN echo x > /x\n");
    assert_ok(&k.run(&["run", "app:1", "true"]), "kiln run (kept)");
    let out = k.run(&["rmi", "app:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("container"), "{}", stderr(&out));
    // Neither does prune -a take it.
    assert_ok(&k.run(&["image", "prune", "-a"]), "image prune -a");
    assert!(names(&k, &[]).contains(&"docker.io/library/app:1".to_string()));
    assert_ok(&k.run(&["rmi", "-f", "app:1"]), "kiln rmi -f");
}

#[test]
fn history_and_inspect_show_the_build() {
    let k = Kiln::with_busybox();
    let id = build_as(
        &k,
        "app",
        "FROM busybox\nLABEL team=kiln\nRUN echo made > /made\nCMD [\"cat\", \"/made\"]\n",
    );
    let v = inspect(&k, "app");
    assert_eq!(v["Id"], id);
    assert_eq!(v["Config"]["Labels"]["team"], "kiln");
    assert_eq!(v["Config"]["Cmd"], serde_json::json!(["cat", "/made"]));
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["RootFS"]["diff_ids"].as_array().unwrap().len(), 2);

    let out = k.run(&["history", "app"]);
    assert_ok(&out, "kiln history");
    let h = stdout(&out);
    let rows: Vec<&str> = h.lines().collect();
    assert!(rows[0].starts_with("IMAGE"), "{h}");
    // Newest first: CMD (no layer), RUN (a layer), LABEL, then the base.
    assert!(
        rows[1].starts_with(&id[7..19]) && rows[1].contains("CMD"),
        "{h}"
    );
    assert!(rows[1].contains(" 0B "), "{h}");
    assert!(
        rows[2].starts_with("<missing>") && rows[2].contains("echo made"),
        "{h}"
    );
    assert!(!rows[2].contains(" 0B "), "{h}");
    assert!(rows[3].contains("LABEL team=kiln"), "{h}");
    assert!(rows.last().unwrap().contains("kiln import"), "{h}");

    let out = k.run(&["image", "inspect", "app", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no such image: `nope`"));
}

#[test]
fn save_is_read_by_skopeo_and_load_brings_the_same_images_back() {
    let k = Kiln::with_busybox();
    let app = build_as(&k, "app:1", "FROM busybox\nRUN echo saved > /s\n");
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("images.tar");
    let out = k.run(&["save", "-o", archive.to_str().unwrap(), "app:1", "busybox"]);
    assert_ok(&out, "kiln save");

    // skopeo reads each image of the archive by its tag, with the layers kiln built.
    let info = tool(
        "skopeo",
        &[
            "inspect",
            &format!("docker-archive:{}:app:1", archive.display()),
        ],
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["Layers"].as_array().unwrap().len(), 2, "{info}");
    let v = inspect(&k, "app:1");
    assert_eq!(info["Layers"], v["RootFS"]["diff_ids"]);
    tool(
        "skopeo",
        &[
            "inspect",
            &format!("docker-archive:{}:busybox:latest", archive.display()),
        ],
    );

    // Another store loads it: same image IDs, and it runs.
    let k2 = Kiln::new();
    let out = k2.run(&["load", "-i", archive.to_str().unwrap()]);
    assert_ok(&out, "kiln load");
    assert_eq!(
        stdout(&out),
        "Loaded image: app:1\nLoaded image: busybox:latest\n"
    );
    assert_eq!(inspect(&k2, "app:1")["Id"], app);
    let out = k2.run(&["run", "--rm", "app:1", "cat", "/s"]);
    assert_ok(&out, "run the loaded image");
    assert_eq!(stdout(&out), "saved\n");

    // Saved by ID, an image has no name in the archive, and loads as a dangling image.
    let by_id = dir.path().join("by-id.tar");
    assert_ok(
        &k.run(&["save", "-o", by_id.to_str().unwrap(), &app[7..19]]),
        "kiln save by ID",
    );
    let k3 = Kiln::new();
    let out = k3.run(&["load", "-i", by_id.to_str().unwrap()]);
    assert_ok(&out, "kiln load of an unnamed image");
    assert_eq!(stdout(&out), format!("Loaded image ID: {app}\n"));
    assert_eq!(
        stdout(&k3.run(&["images", "-q", "--no-trunc", "--filter", "dangling=true"])),
        format!("{app}\n")
    );
}

#[test]
fn load_reads_an_oci_archive_that_skopeo_wrote() {
    let k = Kiln::with_busybox();
    let app = build_as(&k, "app:1", "FROM busybox\nRUN echo oci > /o\n");
    let dir = tempfile::tempdir().unwrap();
    let docker = dir.path().join("d.tar");
    assert_ok(
        &k.run(&["save", "-o", docker.to_str().unwrap(), "app:1"]),
        "kiln save",
    );
    // skopeo turns it into an OCI archive with gzip layers, as a registry would serve them.
    let oci = dir.path().join("o.tar");
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-compress",
            "--dest-compress-format",
            "gzip",
            &format!("docker-archive:{}:app:1", docker.display()),
            &format!("oci-archive:{}:app:2", oci.display()),
        ],
    );
    let k2 = Kiln::new();
    let out = k2.run(&["load", "-i", oci.to_str().unwrap()]);
    assert_ok(&out, "kiln load of an OCI archive");
    assert_eq!(stdout(&out), "Loaded image: app:2\n");
    // skopeo rewrites the config as an OCI one (another ID); the layers are the same.
    assert_eq!(
        inspect(&k2, "app:2")["RootFS"]["diff_ids"],
        inspect(&k, &app)["RootFS"]["diff_ids"]
    );
    let out = k2.run(&["run", "--rm", "app:2", "cat", "/o"]);
    assert_ok(&out, "run the image loaded from an OCI archive");
    assert_eq!(stdout(&out), "oci\n");
}

/// A tar with one entry of this name and content.
fn tar_with(path: &Path, name: &str, data: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(f);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    // `set_path` refuses `..`: write the name field itself, as a hostile archive would.
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    b.append(&h, data).unwrap();
    b.finish().unwrap();
}

#[test]
fn load_refuses_archives_that_are_not_images_in_one_line() {
    let k = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    let escape = dir.path().join("escape.tar");
    tar_with(&escape, "../../evil.json", b"{}");
    let out = k.run(&["load", "-i", escape.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("leaves the archive"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let other = dir.path().join("other.tar");
    tar_with(&other, "hello.txt", b"hi");
    let out = k.run(&["load", "-i", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("neither a docker-archive"),
        "{}",
        stderr(&out)
    );
    let out = k.run(&["load", "-i", "/nonexistent.tar"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot open `/nonexistent.tar`"));
}

#[test]
fn inspect_of_a_name_that_is_no_container_showed_nothing() {
    let k = Kiln::with_busybox();
    let id = build_as(&k, "app:1", "FROM busybox\nRUN echo x > /x\n");
    let out = k.run(&["inspect", "app:1"]);
    assert_ok(&out, "kiln inspect IMAGE");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v[0]["Id"], id.trim(), "{v}");
    // A name that is neither is an error, and the others are still shown.
    let out = k.run(&["inspect", "app:1", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
}

/// `kiln image inspect busybox | head -1` made kiln panic (`failed printing to stdout: Broken
/// pipe`) with a backtrace once `head` had gone. It now ends quietly, with the status of a
/// writer killed by SIGPIPE (141), as `git` and coreutils do.
#[test]
fn a_closed_stdout_pipe_ends_kiln_quietly_not_with_a_panic() {
    let k = Kiln::with_busybox();
    for args in [&["image", "inspect", "busybox"][..], &["images"][..]] {
        let (read_end, write_end) = std::io::pipe().unwrap();
        // The reader is gone before kiln writes a byte.
        drop(read_end);
        let out = k
            .cmd()
            .args(args)
            .stdout(std::process::Stdio::from(write_end))
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
