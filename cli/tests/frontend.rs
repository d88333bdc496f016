//! End-to-end tests of Dockerfile features that need a real build: ONBUILD triggers of a base
//! image, config fields oci-spec lacks (Healthcheck, Shell), named build contexts,
//! `Dockerfile.dockerignore`, and `ADD`'s archive auto-extraction. They need root, as CI runs them.

mod common;

use common::*;
use std::path::Path;

/// The image config of a built image, read from the store through its `--iidfile` (the image
/// ID, which is the config digest).
fn image_config(k: &Kiln, iidfile: &Path) -> serde_json::Value {
    let digest = std::fs::read_to_string(iidfile).unwrap();
    let hex = digest.trim().trim_start_matches("sha256:").to_string();
    serde_json::from_slice(&std::fs::read(k.root.path().join("blobs/sha256").join(hex)).unwrap())
        .unwrap()
}

#[test]
fn onbuild_triggers_of_a_base_image_run_in_the_child_build() {
    let k = Kiln::with_busybox();
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(
        base.join("Dockerfile"),
        "FROM busybox\nONBUILD RUN echo triggered > /onbuild.txt\nONBUILD ENV FROM_TRIGGER=yes\n\
         HEALTHCHECK --interval=5s --retries=2 CMD true\nSHELL [\"/bin/sh\", \"-ec\"]\n",
    )
    .unwrap();
    let iid = work.path().join("base.iid");
    let out = build(
        &k,
        &base,
        &["-t", "onbuild-base", "--iidfile", iid.to_str().unwrap()],
    );
    assert_ok(&out, "build the base");
    let config = image_config(&k, &iid);
    assert_eq!(
        config["config"]["OnBuild"],
        serde_json::json!(["RUN echo triggered > /onbuild.txt", "ENV FROM_TRIGGER=yes"])
    );
    assert_eq!(
        config["config"]["Healthcheck"],
        serde_json::json!({"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000i64, "Retries": 2})
    );
    assert_eq!(
        config["config"]["Shell"],
        serde_json::json!(["/bin/sh", "-ec"])
    );

    let child = work.path().join("child");
    std::fs::create_dir_all(&child).unwrap();
    std::fs::write(
        child.join("Dockerfile"),
        "FROM onbuild-base\nRUN cat /onbuild.txt && test \"$FROM_TRIGGER\" = yes\n",
    )
    .unwrap();
    let iid = work.path().join("child.iid");
    let out = build(
        &k,
        &child,
        &["-t", "onbuild-child", "--iidfile", iid.to_str().unwrap()],
    );
    assert_ok(&out, "build the child");
    assert!(
        stderr(&out).contains("ONBUILD RUN echo triggered"),
        "{}",
        stderr(&out)
    );
    let config = image_config(&k, &iid);
    assert!(
        config["config"].get("OnBuild").is_none(),
        "triggers are consumed: {config}"
    );
    assert_eq!(
        config["config"]["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "true"]),
        "the healthcheck is inherited"
    );
    let out = k.run(&["run", "--rm", "onbuild-child", "cat", "/onbuild.txt"]);
    assert_ok(&out, "run the child");
    assert_eq!(stdout(&out), "triggered\n");
}

#[test]
fn named_build_contexts_replace_images_and_feed_copy_from() {
    let k = Kiln::with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    let extra = work.path().join("extra");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("data.txt"), "from the named context\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM base-alias\nCOPY --from=extra data.txt /data.txt\nRUN cat /data.txt\n",
    )
    .unwrap();
    let out = build(
        &k,
        &ctx,
        &[
            "-t",
            "named",
            "--build-context",
            "base-alias=docker-image://busybox:latest",
            "--build-context",
            &format!("extra={}", extra.display()),
        ],
    );
    assert_ok(&out, "build with named contexts");
    let out = k.run(&["run", "--rm", "named", "cat", "/data.txt"]);
    assert_ok(&out, "run");
    assert_eq!(stdout(&out), "from the named context\n");
}

#[test]
fn dockerfile_specific_dockerignore_wins() {
    let k = Kiln::with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("a.txt"), "a\n").unwrap();
    std::fs::write(ctx.join("b.txt"), "b\n").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "a.txt\n").unwrap();
    std::fs::write(ctx.join("app.Dockerfile"), "FROM busybox\nCOPY . /ctx/\n").unwrap();
    std::fs::write(ctx.join("app.Dockerfile.dockerignore"), "b.txt\n").unwrap();
    let df = ctx.join("app.Dockerfile");
    let out = build(&k, &ctx, &["-t", "ign", "-f", df.to_str().unwrap()]);
    assert_ok(&out, "build with app.Dockerfile");
    let out = k.run(&["run", "--rm", "ign", "ls", "/ctx"]);
    assert_ok(&out, "run");
    let listing = stdout(&out);
    assert!(listing.contains("a.txt"), "{listing}");
    assert!(!listing.contains("b.txt"), "{listing}");
}

#[test]
fn add_unpacks_local_tar_archives() {
    let k = Kiln::with_busybox();
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    let payload = work.path().join("payload");
    std::fs::create_dir_all(payload.join("pkg")).unwrap();
    std::fs::write(payload.join("pkg/hello.txt"), "unpacked\n").unwrap();
    std::fs::create_dir_all(&ctx).unwrap();
    let status = std::process::Command::new("tar")
        .args(["-czf"])
        .arg(ctx.join("pkg.tar.gz"))
        .arg("-C")
        .arg(&payload)
        .arg("pkg")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::write(ctx.join("notes.gz"), b"\x1f\x8bnot really gzip").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nADD pkg.tar.gz /opt/\nADD notes.gz /opt/\nCOPY pkg.tar.gz /copied/\n",
    )
    .unwrap();
    let out = build(&k, &ctx, &["-t", "added"]);
    assert_ok(&out, "build with ADD of an archive");
    let out = k.run(&[
        "run",
        "--rm",
        "added",
        "sh",
        "-c",
        "cat /opt/pkg/hello.txt && ls /opt /copied",
    ]);
    assert_ok(&out, "run");
    let text = stdout(&out);
    assert!(text.starts_with("unpacked\n"), "{text}");
    assert!(text.contains("notes.gz"), "a non-archive is copied: {text}");
    assert!(text.contains("pkg.tar.gz"), "COPY never unpacks: {text}");
}
