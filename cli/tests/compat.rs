//! End-to-end regression tests for behaviour that must match BuildKit v0.11.6 (issue 13): each
//! builds an image with the `kiln` binary and checks what a user of that image sees.

mod common;

use common::*;
use std::path::Path;

fn build(k: &Kiln, ctx: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    k.run(&args)
}

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
