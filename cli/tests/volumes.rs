//! Volumes and mounts of `kiln run`, end to end as root: named volumes seeded from the image
//! that outlive their container, anonymous ones that go with `rm -v`/`--rm`, `kiln volume
//! create|ls|rm|inspect|prune`, binds (`:ro` too), `--mount`, `--tmpfs`, and the errors.

mod common;

use common::*;

fn volume_names(k: &Kiln) -> Vec<String> {
    let out = k.run(&["volume", "ls", "-q"]);
    assert_ok(&out, "kiln volume ls -q");
    stdout(&out).lines().map(str::to_string).collect()
}

fn inspect_container(k: &Kiln, name: &str) -> serde_json::Value {
    let out = k.run(&["inspect", name]);
    assert_ok(&out, "kiln inspect");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("inspect prints JSON");
    v[0].clone()
}

/// Fails as kiln's own errors do: exit 125 and one line saying `what`.
fn assert_refused(out: &std::process::Output, what: &str) {
    assert_eq!(out.status.code(), Some(125), "{}", stderr(out));
    let err = stderr(out);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(what), "{err}");
}

#[test]
fn a_named_volume_is_seeded_from_the_image_and_outlives_its_container() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-volumes-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN mkdir -p /srv/data && echo seeded > /srv/data/f && chown 1000:1000 /srv/data/f && chmod 750 /srv/data\n",
        )],
    );
    assert_ok(&build(&k, ctx.path(), &["-t", "seeded"]), "kiln build");
    let out = k.run(&[
        "run",
        "--name",
        "writer",
        "-v",
        "data:/srv/data",
        "seeded",
        "sh",
        "-c",
        "cat /srv/data/f; stat -c '%u %a' /srv/data/f /srv/data; echo more > /srv/data/g",
    ]);
    assert_ok(&out, "kiln run -v data:/srv/data");
    assert_eq!(stdout(&out), "seeded\n1000 644\n0 750\n");
    assert_eq!(volume_names(&k), vec!["data"]);
    let mounts = &inspect_container(&k, "writer")["Mounts"];
    assert_eq!(mounts[0]["Type"], "volume");
    assert_eq!(mounts[0]["Name"], "data");
    assert_eq!(mounts[0]["Destination"], "/srv/data");

    let out = k.run(&["volume", "inspect", "data"]);
    assert_ok(&out, "kiln volume inspect");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let mountpoint = std::path::PathBuf::from(v[0]["Mountpoint"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(mountpoint.join("g")).unwrap(),
        "more\n"
    );

    // In use by a stopped container: refused, as Docker does.
    let out = k.run(&["volume", "rm", "data"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("in use by container `writer`"),
        "{}",
        stderr(&out)
    );
    assert_ok(&k.run(&["rm", "-v", "writer"]), "kiln rm -v");
    assert_eq!(volume_names(&k), vec!["data"], "rm -v keeps named volumes");

    // Not seeded again: it is not empty.
    std::fs::remove_file(mountpoint.join("f")).unwrap();
    let out = k.run(&[
        "run",
        "--rm",
        "-v",
        "data:/srv/data",
        "seeded",
        "ls",
        "/srv/data",
    ]);
    assert_ok(&out, "kiln run with the volume again");
    assert_eq!(stdout(&out), "g\n");

    assert_ok(&k.run(&["volume", "rm", "data"]), "kiln volume rm");
    assert!(volume_names(&k).is_empty());
    assert!(!mountpoint.exists());
}

#[test]
fn anonymous_volumes_go_with_rm_v_and_rm_and_prune_keeps_named_ones() {
    let k = Kiln::with_busybox();
    let out = k.run(&[
        "run", "--name", "a1", "-v", "/cache", "busybox", "touch", "/cache/x",
    ]);
    assert_ok(&out, "kiln run -v /cache");
    let name = inspect_container(&k, "a1")["Mounts"][0]["Name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(name.len(), 64, "{name}");
    assert_eq!(volume_names(&k), vec![name.clone()]);
    assert_ok(&k.run(&["rm", "-v", "a1"]), "kiln rm -v");
    assert!(
        volume_names(&k).is_empty(),
        "rm -v removed the anonymous volume"
    );

    assert_ok(
        &k.run(&["run", "--rm", "-v", "/cache", "busybox", "true"]),
        "kiln run --rm -v /cache",
    );
    assert!(
        volume_names(&k).is_empty(),
        "--rm removed the anonymous volume"
    );

    let out = k.run(&["volume", "create", "keep"]);
    assert_ok(&out, "kiln volume create");
    assert_eq!(stdout(&out), "keep\n");
    assert_ok(
        &k.run(&[
            "run",
            "--name",
            "a2",
            "--mount",
            "type=volume,target=/c",
            "busybox",
            "true",
        ]),
        "kiln run --mount type=volume",
    );
    assert_ok(&k.run(&["rm", "a2"]), "kiln rm");
    assert_eq!(
        volume_names(&k).len(),
        2,
        "rm without -v keeps the anonymous volume"
    );
    let out = k.run(&["volume", "prune", "-f"]);
    assert_ok(&out, "kiln volume prune");
    assert_eq!(
        volume_names(&k),
        vec!["keep"],
        "prune removes anonymous volumes only"
    );
    assert_ok(
        &k.run(&["volume", "prune", "-a", "-f"]),
        "kiln volume prune -a",
    );
    assert!(volume_names(&k).is_empty());
}

#[test]
fn binds_mounts_and_tmpfs_reach_the_container() {
    let k = Kiln::with_busybox();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in"), "from the host\n").unwrap();
    let src = host.path().to_str().unwrap();
    let out = k.run(&[
        "run",
        "--rm",
        "-v",
        &format!("{src}:/mnt/ro:ro"),
        "--mount",
        &format!("type=bind,source={src},target=/mnt/rw"),
        "--mount",
        "type=tmpfs,target=/scratch,tmpfs-size=1m",
        "--tmpfs",
        "/t2:mode=1777",
        "busybox",
        "sh",
        "-c",
        "cat /mnt/ro/in; touch /mnt/ro/no 2>/dev/null || echo ro-refused; echo out > /mnt/rw/out; \
         grep -E ' /(scratch|t2) ' /proc/mounts | cut -d' ' -f1-3; stat -c %a /t2",
    ]);
    assert_ok(&out, "kiln run with binds and tmpfs");
    assert_eq!(
        stdout(&out),
        "from the host\nro-refused\ntmpfs /scratch tmpfs\ntmpfs /t2 tmpfs\n1777\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.path().join("out")).unwrap(),
        "out\n"
    );
    assert!(!host.path().join("no").exists());
}

#[test]
fn bad_mounts_are_one_line_and_exit_125() {
    let k = Kiln::with_busybox();
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--rm"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["busybox", "true"]);
        k.run(&all)
    };
    assert_refused(
        &run(&["-v", "/does/not/exist:/x"]),
        "the bind mount source `/does/not/exist` does not exist",
    );
    assert_refused(
        &run(&["-v", "data:/etc/passwd"]),
        "cannot mount a volume at `/etc/passwd`: that is a file in `busybox`",
    );
    let host = tempfile::tempdir().unwrap();
    assert_refused(
        &run(&["-v", &format!("{}:/etc/passwd", host.path().display())]),
        "that is a file in `busybox`",
    );
    assert_refused(
        &run(&["-v", "./rel:/x"]),
        "invalid characters for a local volume name",
    );
    assert_refused(&run(&["-v", "data:rel"]), "is not absolute");
    assert_refused(
        &run(&["-v", "a1:/x", "-v", "b1:/x/"]),
        "duplicate mount point `/x/`",
    );
    assert_refused(
        &run(&["--mount", "type=bind,target=/x"]),
        "needs `source=/host/path`",
    );
    // Nothing was left behind by the refused runs.
    assert!(volume_names(&k).is_empty(), "{:?}", volume_names(&k));
    let ps = k.run(&["ps", "-a", "-q"]);
    assert_eq!(stdout(&ps), "");
}

#[test]
fn an_image_volume_gets_an_anonymous_volume_seeded_from_the_image() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-volumes-",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN mkdir /state && echo from-image > /state/f\nVOLUME /state\n",
        )],
    );
    assert_ok(&build(&k, ctx.path(), &["-t", "withvol"]), "kiln build");
    let out = k.run(&[
        "run",
        "--name",
        "v1",
        "withvol",
        "sh",
        "-c",
        "cat /state/f; echo new > /state/g",
    ]);
    assert_ok(&out, "kiln run of an image with VOLUME");
    assert_eq!(stdout(&out), "from-image\n");
    let mount = &inspect_container(&k, "v1")["Mounts"][0];
    assert_eq!(mount["Destination"], "/state");
    let name = mount["Name"].as_str().unwrap().to_string();
    assert_eq!(volume_names(&k), vec![name]);
    // A mount the user gives at that path replaces it.
    let out = k.run(&[
        "run",
        "--rm",
        "-v",
        "mine:/state",
        "withvol",
        "ls",
        "/state",
    ]);
    assert_ok(&out, "kiln run -v over the image's VOLUME");
    assert_eq!(stdout(&out), "f\n");
    assert_eq!(volume_names(&k).len(), 2, "{:?}", volume_names(&k));
    assert_ok(&k.run(&["rm", "-v", "v1"]), "kiln rm -v");
    assert_eq!(volume_names(&k), vec!["mine"]);
}
