//! End-to-end regression tests for behaviour that must match BuildKit v0.11.6 (issue 13): each
//! builds an image with the `kiln` binary and checks what a user of that image sees.

mod common;

use common::*;
use std::path::Path;

/// The config of a stored image, as skopeo reads it from the store's OCI layout.
fn stored_config(k: &Kiln, name: &str) -> serde_json::Value {
    let layout = format!("oci:{}/images:{name}", k.root.path().display());
    serde_json::from_str(&tool("skopeo", &["inspect", "--config", &layout])).unwrap()
}

#[test]
fn cmd_leaves_args_escaped_out_of_the_image_config() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-compat-",
        &[(
            "Dockerfile",
            "FROM busybox AS entry\nENTRYPOINT [\"echo\"]\nFROM busybox\nCMD [\"echo\", \"hi\"]\n",
        )],
    );
    let out = build(&k, ctx.path(), &["-t", "cmd"]);
    assert_ok(&out, "kiln build with CMD");
    let config = stored_config(&k, "docker.io/library/cmd:latest");
    assert_eq!(config["config"]["ArgsEscaped"], serde_json::json!(true));

    let out = build(&k, ctx.path(), &["-t", "entry", "--target", "entry"]);
    assert_ok(&out, "kiln build with ENTRYPOINT");
    let config = stored_config(&k, "docker.io/library/entry:latest");
    assert!(
        config["config"].get("ArgsEscaped").is_none(),
        "ENTRYPOINT alone does not set ArgsEscaped: {config}"
    );
}

/// `id` in each step and a file readable only through a supplementary group, under every
/// runtime, for `RUN` and for `kiln run` (the kernel sorts the groups `id` prints).
#[test]
fn steps_lacked_their_primary_and_etc_group_supplementary_groups() {
    let dockerfile = r#"FROM busybox
RUN echo 'secret:x:4242:nobody' >> /etc/group \
 && mkdir /s && echo hidden > /s/f && chown 0:4242 /s/f && chmod 040 /s/f && mkdir -m 1777 /out
RUN id > /out/root
USER nobody
RUN id > /out/nobody && cat /s/f > /out/read
USER 1234:5678
RUN id > /out/numeric
"#;
    let ctx = temp_context("kiln-compat-", &[("Dockerfile", dockerfile)]);
    for runtime in runtimes() {
        let k = Kiln::with_busybox();
        let dest = tempfile::tempdir().unwrap();
        let out = build(
            &k,
            ctx.path(),
            &[
                "--runtime",
                runtime,
                "-t",
                "groups",
                "-o",
                &format!("type=local,dest={}", dest.path().display()),
            ],
        );
        assert_ok(&out, &format!("kiln build --runtime {runtime}"));
        let read =
            |name: &str| std::fs::read_to_string(dest.path().join("out").join(name)).unwrap();
        assert_eq!(
            read("root"),
            "uid=0(root) gid=0(root) groups=0(root)\n",
            "{runtime}"
        );
        assert_eq!(
            read("nobody"),
            "uid=65534(nobody) gid=65534(nogroup) groups=4242(secret),65534(nogroup)\n",
            "{runtime}"
        );
        assert_eq!(read("read"), "hidden\n", "{runtime}");
        assert_eq!(
            read("numeric"),
            "uid=1234 gid=5678 groups=5678\n",
            "{runtime}"
        );

        let out = build(&k, ctx.path(), &["--runtime", runtime, "-t", "groups"]);
        assert_ok(&out, "kiln build -t groups");
        for (user, want) in [
            ("0", "uid=0(root) gid=0(root) groups=0(root)\n"),
            (
                "nobody",
                "uid=65534(nobody) gid=65534(nogroup) groups=4242(secret),65534(nogroup)\n",
            ),
        ] {
            let out = k.run(&[
                "run",
                "--rm",
                "--runtime",
                runtime,
                "-u",
                user,
                "groups",
                "id",
            ]);
            assert_ok(&out, &format!("kiln run --runtime {runtime} -u {user}"));
            assert_eq!(stdout(&out), want, "kiln run --runtime {runtime} -u {user}");
        }
    }
}

/// The manifest annotations of an OCI archive's `index.json`.
fn archive_index_annotations(tar: &Path) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(tar)
        .arg("index.json")
        .output()
        .unwrap();
    assert_ok(&out, "tar -xOf index.json");
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["annotations"].clone())
        .collect()
}

#[test]
fn oci_archive_ref_name_held_the_whole_name_so_skopeo_found_no_tag() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-compat-",
        &[("Dockerfile", "FROM busybox\nRUN echo x > /x\n")],
    );
    let work = tempfile::tempdir().unwrap();
    let named = work.path().join("named.tar");
    let tagged = work.path().join("tagged.tar");
    let out = build(
        &k,
        ctx.path(),
        &[
            "-t",
            "app:2",
            "-o",
            &format!("type=oci,dest={},name=reg/app:1", named.display()),
            "-o",
            &format!("type=oci,dest={}", tagged.display()),
        ],
    );
    assert_ok(&out, "kiln build -o type=oci,name=reg/app:1");
    assert_eq!(
        archive_index_annotations(&named),
        vec![serde_json::json!({
            "io.containerd.image.name": "docker.io/reg/app:1",
            "org.opencontainers.image.ref.name": "1",
        })]
    );
    assert_eq!(
        archive_index_annotations(&tagged),
        vec![serde_json::json!({
            "io.containerd.image.name": "docker.io/library/app:2",
            "org.opencontainers.image.ref.name": "2",
        })]
    );
    let layout = work.path().join("layout");
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci-archive:{}:1", named.display()),
            &format!("oci:{}:copied", layout.display()),
        ],
    );
}

#[test]
fn stage_base_kept_cmd_after_entrypoint_and_skipped_its_onbuild_triggers() {
    let k = Kiln::with_busybox();
    let dockerfile = r#"FROM busybox AS base
ONBUILD RUN echo one >> /trig
ONBUILD RUN echo two >> /trig
CMD ["base-cmd"]
FROM base AS child
RUN cat /trig > /seen
FROM child
ENTRYPOINT ["echo"]
"#;
    let ctx = temp_context("kiln-compat-", &[("Dockerfile", dockerfile)]);
    let dest = tempfile::tempdir().unwrap();
    let out = build(
        &k,
        ctx.path(),
        &[
            "-t",
            "final",
            "-o",
            &format!("type=local,dest={}", dest.path().display()),
        ],
    );
    assert_ok(&out, "kiln build FROM stage");
    let read = |name: &str| std::fs::read_to_string(dest.path().join(name)).unwrap();
    assert_eq!(
        read("seen"),
        "one\ntwo\n",
        "the triggers ran in order, first"
    );
    assert_eq!(read("trig"), "one\ntwo\n", "the triggers ran once");
    let config = stored_config(&k, "docker.io/library/final:latest");
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["echo"]));
    assert!(
        config["config"].get("Cmd").is_none() && config["config"].get("OnBuild").is_none(),
        "no CMD after ENTRYPOINT, no triggers left: {config}"
    );
}

/// One ustar entry (header and padded data), written by hand so that a hard link's header can
/// differ from its target's, as no tar tool writes it.
fn ustar(
    name: &str,
    kind: u8,
    mode: u32,
    owner: u32,
    mtime: u64,
    link: &str,
    data: &[u8],
) -> Vec<u8> {
    let mut h = [0u8; 512];
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h, 100, 8, mode.into());
    octal(&mut h, 108, 8, owner.into());
    octal(&mut h, 116, 8, owner.into());
    octal(&mut h, 124, 12, data.len() as u64);
    octal(&mut h, 136, 12, mtime);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

#[test]
fn add_tar_hard_link_header_was_ignored_for_the_shared_inode() {
    let mut tar = ustar("file", b'0', 0o644, 1, 100, "", b"hi\n");
    tar.extend(ustar("link", b'1', 0o750, 1000, 5000, "file", b""));
    tar.resize(tar.len() + 1024, 0);
    let ctx = temp_context(
        "kiln-compat-",
        &[(
            "Dockerfile",
            "FROM busybox\nADD links.tar /x/\n\
             RUN stat -c '%n %h %a %u:%g %Y' /x/file /x/link > /stat\n",
        )],
    );
    std::fs::write(ctx.path().join("links.tar"), tar).unwrap();
    let k = Kiln::with_busybox();
    let dest = tempfile::tempdir().unwrap();
    let out = build(
        &k,
        ctx.path(),
        &["-o", &format!("type=local,dest={}", dest.path().display())],
    );
    assert_ok(&out, "kiln build with ADD of a tar holding a hard link");
    assert_eq!(
        std::fs::read_to_string(dest.path().join("stat")).unwrap(),
        "/x/file 2 750 1000:1000 5000\n/x/link 2 750 1000:1000 5000\n"
    );
}

#[test]
fn escape_backtick_flag_values_lost_their_backslashes() {
    let dockerfile = "# escape=`\nFROM busybox\n\
                      RUN --mount=type=bind,source=in\\data,target=/m cat /m > /out\n";
    let ctx = temp_context(
        "kiln-compat-",
        &[
            ("Dockerfile", dockerfile),
            ("in\\data", "windows-style name\n"),
        ],
    );
    let k = Kiln::with_busybox();
    let dest = tempfile::tempdir().unwrap();
    let out = build(
        &k,
        ctx.path(),
        &["-o", &format!("type=local,dest={}", dest.path().display())],
    );
    assert_ok(
        &out,
        "kiln build with a backslash in a flag under `# escape=`",
    );
    assert_eq!(
        std::fs::read_to_string(dest.path().join("out")).unwrap(),
        "windows-style name\n"
    );
    let debug = k.run(&[
        "debug",
        "parse",
        "-f",
        ctx.path().join("Dockerfile").to_str().unwrap(),
    ]);
    assert_ok(&debug, "kiln debug parse");
    assert!(
        stdout(&debug).contains(r#"(run ["--mount=type=bind,source=in\\data,target=/m"]"#),
        "{}",
        stdout(&debug)
    );
}
