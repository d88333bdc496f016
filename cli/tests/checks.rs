//! BuildKit's build checks as `kiln build` prints them: the UndefinedVar warnings of a real
//! build compared with a golden file (regenerate with `KILN_BLESS=1`), and `# check=error=true`
//! turning one into a failed build.

mod common;

use common::*;

const DOCKERFILE: &str = r#"FROM busybox
ARG VERSION=1.0
ENV APP_HOME=/app
WORKDIR $APP_HOM
COPY --chown=${OWNER:-root} app-$VERSOIN.txt $APP_HOME/
LABEL version=$VERSION path=$PATH
RUN echo "the shell expands $UNSET_IN_RUN, not the Dockerfile"
"#;

/// The warning lines of a build's stderr, in order.
fn warning_lines(err: &str) -> String {
    err.lines()
        .filter(|l| l.starts_with("warning:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn build_prints_undefined_var_warnings() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-checks-",
        &[("Dockerfile", DOCKERFILE), ("app-.txt", "app\n")],
    );
    let out = k.run(&[
        "build",
        "-t",
        "checks:undefined",
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "kiln build with undefined variables");
    let err = stderr(&out);
    let warnings = warning_lines(&err);
    assert!(
        !warnings.contains("UNSET_IN_RUN"),
        "RUN is not checked:\n{err}"
    );
    check_golden("checks", "undefined_var.warnings", &warnings);

    // The same finding fails the build under `# check=error=true`, before anything runs.
    let strict = format!("# check=error=true\n{DOCKERFILE}");
    std::fs::write(ctx.path().join("Dockerfile"), strict).unwrap();
    let out = k.run(&["build", ctx.path().to_str().unwrap()]);
    assert!(!out.status.success(), "error=true fails the build");
    let err = stderr(&out);
    assert!(
        err.contains(
            "Dockerfile:5: UndefinedVar: Usage of undefined variable '$APP_HOM' (did you mean $APP_HOME?)"
        ),
        "{err}"
    );
    assert!(!err.contains("DONE"), "no step ran:\n{err}");
}
