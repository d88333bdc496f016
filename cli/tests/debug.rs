//! `kiln debug parse` and `kiln debug llb`: golden files of their output for a Dockerfile that
//! uses every instruction (regenerate with `KILN_BLESS=1`), plus their error messages. Neither
//! command opens a store or needs root.

mod common;

use common::*;

/// A Dockerfile with every instruction and most flags.
const ALL: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
ARG VERSION=1.0
FROM ${BASE} AS build
ARG VERSION
ENV APP=/app \
    MODE=release
ENV LEGACY value with spaces
LABEL org.example.version=$VERSION "org.example.name"="demo"
MAINTAINER Jane Doe <jane@example.com>
WORKDIR $APP
COPY --chown=1000:1000 --chmod=0640 src/ ./src/
ADD --chmod=0755 tool.sh /usr/local/bin/
RUN --mount=type=cache,target=/root/.cache \
    --network=none \
    echo building $VERSION
RUN <<EOF
echo heredoc one
echo heredoc two
EOF
COPY <<-CONF /etc/app.conf
	mode=$MODE
	CONF
RUN ["sh", "-c", "echo exec form"]

FROM build AS skipped
RUN echo never compiled

FROM busybox
COPY --from=build /app/src /srv/
COPY --from=0 /etc/app.conf /etc/
EXPOSE 8080 53/udp 9000-9001
VOLUME ["/data"]
USER nobody:nogroup
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --retries=3 CMD wget -q localhost:8080 || exit 1
SHELL ["/bin/sh", "-ec"]
ONBUILD RUN echo child build
ENTRYPOINT ["/bin/sh"]
CMD echo serving
"#;

/// The host architecture is part of the output (`image.platform`, `architecture`); name it
/// generically so the golden files hold on any machine.
fn normalise(text: &str) -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    text.replace(&format!("linux/{arch}"), "linux/HOSTARCH")
        .replace(
            &format!("\"architecture\": \"{arch}\""),
            "\"architecture\": \"HOSTARCH\"",
        )
}

fn context() -> tempfile::TempDir {
    let dir = temp_context("kiln-ctx-", &[("Dockerfile", ALL)]);
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/main.c"), "int main(){}\n").unwrap();
    std::fs::write(dir.path().join("tool.sh"), "#!/bin/sh\n").unwrap();
    std::fs::write(dir.path().join(".dockerignore"), "*.log\n!keep.log\n").unwrap();
    dir
}

#[test]
fn debug_parse_prints_the_corpus_dump() {
    let ctx = context();
    let k = Kiln::new();
    let df = ctx.path().join("Dockerfile");
    let out = k.run(&["debug", "parse", "-f", df.to_str().unwrap()]);
    assert_ok(&out, "kiln debug parse");
    check_golden("debug", "all.parse", &stdout(&out));
    // Without -f it reads ./Dockerfile.
    let out = k
        .cmd()
        .args(["debug", "parse"])
        .current_dir(ctx.path())
        .output()
        .unwrap();
    assert_ok(&out, "kiln debug parse in the context");
    check_golden("debug", "all.parse", &stdout(&out));
}

#[test]
fn debug_llb_prints_the_graph_as_json() {
    let ctx = context();
    let k = Kiln::new();
    let out = k.run(&[
        "debug",
        "llb",
        "--build-arg",
        "VERSION=2.0",
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "kiln debug llb");
    let text = stdout(&out);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON output");
    assert!(
        !text.contains("never compiled"),
        "stages the target does not need are left out"
    );
    assert_eq!(
        doc["config_extras"]["OnBuild"],
        serde_json::json!(["RUN echo child build"])
    );
    let warnings = stderr(&out);
    assert!(warnings.contains("MaintainerDeprecated"), "{warnings}");
    check_golden("debug", "all.llb.json", &normalise(&text));

    let out = k.run(&[
        "debug",
        "llb",
        "--target",
        "build",
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "kiln debug llb --target build");
    check_golden(
        "debug",
        "all-target-build.llb.json",
        &normalise(&stdout(&out)),
    );
}

#[test]
fn debug_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let df = dir.path().join("Dockerfile.bad");
    std::fs::write(&df, "FROM busybox\nCOPPY a b\n").unwrap();
    let k = Kiln::new();
    let out = k.run(&[
        "debug",
        "llb",
        "-f",
        df.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(":2: unknown instruction `COPPY`: did you mean `COPY`?"),
        "{}",
        stderr(&out)
    );
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM busybox AS build\nFROM busybox\nCOPY --from=biuld /a /b\n",
    )
    .unwrap();
    let out = k.run(&["debug", "llb", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("Dockerfile:3:"), "{err}");
    assert!(err.contains("did you mean `build`?"), "{err}");
}

/// Digests and creation times of images built during the test vary from run to run: name them
/// generically.
fn normalise_resolved(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) if s.starts_with("kiln import ") => {
            // The imported busybox rootfs is a per-process temp dir.
            *s = "kiln import ROOTFS".into();
        }
        serde_json::Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("sha256:") {
                let hex = &rest[i + 7..];
                let n = hex.bytes().take_while(u8::is_ascii_hexdigit).count();
                out.push_str(&rest[..i]);
                if n == 64 {
                    out.push_str("sha256:DIGEST");
                    rest = &hex[64..];
                } else {
                    out.push_str("sha256:");
                    rest = hex;
                }
            }
            out.push_str(rest);
            *s = out;
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(normalise_resolved),
        serde_json::Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                if k == "created" && v.is_string() {
                    *v = serde_json::Value::from("CREATED");
                } else {
                    normalise_resolved(v);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn debug_llb_resolve_shows_the_base_images_config_and_onbuild_triggers() {
    let k = Kiln::with_busybox();
    let base = temp_context(
        "kiln-ctx-",
        &[(
            "Dockerfile",
            "FROM busybox\nENV BASE_ENV=from-base\nWORKDIR /srv\n\
             ONBUILD RUN echo from-trigger\nCMD [\"serve\"]\n",
        )],
    );
    let out = k.run(&["build", "-t", "onbuild-base", base.path().to_str().unwrap()]);
    assert_ok(&out, "build the base image");
    let child = temp_context(
        "kiln-ctx-",
        &[(
            "Dockerfile",
            "FROM onbuild-base\nRUN echo $BASE_ENV\nLABEL env=$BASE_ENV\n",
        )],
    );
    let ctx = child.path().to_str().unwrap();

    let out = k.run(&["debug", "llb", "--resolve", ctx]);
    assert_ok(&out, "kiln debug llb --resolve");
    let mut doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON output");
    let text = doc.to_string();
    assert!(
        text.contains("echo from-trigger"),
        "the base's trigger runs: {text}"
    );
    assert!(
        text.contains("BASE_ENV=from-base") && text.contains("\"/srv\""),
        "the base's ENV and WORKDIR are inherited: {text}"
    );
    assert!(
        !stderr(&out).contains("UndefinedVar"),
        "BASE_ENV comes from the base image: {}",
        stderr(&out)
    );
    normalise_resolved(&mut doc);
    let pretty = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    check_golden("debug", "onbuild-resolved.llb.json", &normalise(&pretty));

    // Offline (the default), the base contributes nothing and the trigger does not show.
    let out = k.run(&["debug", "llb", ctx]);
    assert_ok(&out, "kiln debug llb");
    assert!(!stdout(&out).contains("from-trigger"), "{}", stdout(&out));
    assert!(stderr(&out).contains("UndefinedVar"), "{}", stderr(&out));
}

// Issue 13 item 7: as BuildKit's parser, `debug parse` dumps what it cannot compile (an unknown
// word, `ONBUILD ONBUILD`, a file holding only `\`); compiling it is what fails.
#[test]
fn debug_parse_dumps_instructions_it_does_not_validate() {
    let dir = tempfile::tempdir().unwrap();
    let k = Kiln::new();
    for (text, dump, error) in [
        (
            "FROM busybox\nCOPPY --x=1 a b\n",
            "(from \"busybox\")\n(coppy [\"--x=1\"])\n",
            "Dockerfile:2: unknown instruction `COPPY`: did you mean `COPY`?",
        ),
        (
            "FROM busybox\nONBUILD ONBUILD RUN a\n",
            "(from \"busybox\")\n(onbuild (onbuild (run \"a\")))\n",
            "Dockerfile:2: chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        ),
        (
            "\\\n",
            "()\n",
            "Dockerfile:1: expected an instruction such as `FROM` or `RUN`",
        ),
    ] {
        let df = dir.path().join("Dockerfile");
        std::fs::write(&df, text).unwrap();
        let out = k.run(&["debug", "parse", "-f", df.to_str().unwrap()]);
        assert_ok(&out, "kiln debug parse");
        assert_eq!(stdout(&out), dump, "{text:?}");
        for command in ["debug llb", "build"] {
            let mut args: Vec<&str> = command.split(' ').collect();
            args.push(dir.path().to_str().unwrap());
            let out = k.run(&args);
            assert!(!out.status.success(), "`kiln {command}` accepted {text:?}");
            assert!(stderr(&out).contains(error), "{}", stderr(&out));
        }
    }
}
