//! Hostile Dockerfiles: shapes that crashed kiln (stack overflows) or cost it quadratic time,
//! compiled the way the daemon does, on a thread with a tokio worker's 2 MiB stack. Each must
//! compile, or fail with a short error naming the line, within a time a linear compiler meets
//! on a loaded machine in a debug build.

use kiln_frontend::{compile, BuildOptions, Compiled, FrontendError, ImageResolver, ResolvedImage};
use std::time::{Duration, Instant};

struct AnyImage;

impl ImageResolver for AnyImage {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
        if reference.starts_with("AAAA") {
            return Err("manifest unknown".into());
        }
        Ok(ResolvedImage {
            reference: format!("docker.io/library/{reference}:latest"),
            config: oci_spec::image::ImageConfiguration::default(),
            raw_config: serde_json::Value::Null,
        })
    }
}

/// Compiles `text` on a 2 MiB stack and returns the result and how long it took.
fn compile_on_worker_stack(text: String) -> (Result<Compiled, String>, Duration) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let start = Instant::now();
            let r = compile(&text, &BuildOptions::default(), &AnyImage)
                .map_err(|e: FrontendError| e.to_string());
            (r, start.elapsed())
        })
        .unwrap()
        .join()
        .expect("the compiler panicked")
}

/// The error of a compile that must fail.
fn failure(r: Result<Compiled, String>, what: &str) -> String {
    match r {
        Ok(_) => panic!("compiled: {what}"),
        Err(e) => e,
    }
}

fn nested_defaults(depth: usize) -> String {
    let mut word = "x".to_string();
    for i in 0..depth {
        word = format!("${{a{i}:-{word}}}");
    }
    word
}

#[test]
fn defaults_nested_5000_deep_are_an_error_naming_the_line() {
    let text = format!("FROM busybox\nENV X={}\n", nested_defaults(5000));
    let (r, _) = compile_on_worker_stack(text);
    let err = failure(r, "nested defaults");
    assert!(
        err.starts_with("Dockerfile:2: cannot expand `${a4999:-"),
        "{err}"
    );
    assert!(err.contains("nested deeper than 100 levels"), "{err}");
    assert!(err.len() < 1000, "{} bytes", err.len());
    // Under the limit the value is what it should be.
    let text = format!("FROM busybox\nENV X={}\n", nested_defaults(90));
    let c = compile_on_worker_stack(text).0.unwrap();
    let env = c
        .image_config
        .config()
        .as_ref()
        .unwrap()
        .env()
        .clone()
        .unwrap();
    assert!(env.contains(&"X=x".to_string()), "{env:?}");
}

#[test]
fn seven_hundred_chained_from_stages_compile() {
    let mut text = "FROM busybox AS s0\nENV N=0\n".to_string();
    for i in 0..700 {
        text.push_str(&format!("FROM s{i} AS s{}\n", i + 1));
    }
    text.push_str("RUN echo $N\n");
    let (r, took) = compile_on_worker_stack(text);
    let c = r.unwrap();
    // The image source and the one RUN.
    assert_eq!(c.definition.ops.len(), 2);
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn a_copy_from_chain_deeper_than_the_limit_is_an_error_naming_the_line() {
    let chain = |n: usize| {
        let mut text = "FROM busybox AS s0\n".to_string();
        for i in 0..n {
            text.push_str(&format!(
                "FROM busybox AS s{}\nCOPY --from=s{i} /a /a\n",
                i + 1
            ));
        }
        text
    };
    let c = compile_on_worker_stack(chain(15)).0.unwrap();
    assert!(c.definition.ops.len() > 15);
    let err = failure(compile_on_worker_stack(chain(700)).0, "a chain of 700");
    assert!(err.contains("more than 16 deep"), "{err}");
    assert!(err.contains(" | COPY --from=s"), "{err}");
}

/// Seconds to compile `n` lines made by `line`.
fn compile_lines(n: usize, line: impl Fn(usize) -> String) -> Duration {
    let mut text = "FROM busybox\n".to_string();
    for i in 0..n {
        text.push_str(&line(i));
        text.push('\n');
    }
    let (r, took) = compile_on_worker_stack(text);
    r.unwrap();
    took
}

#[test]
fn hundred_thousand_env_lines_compile_in_linear_time() {
    // Quadratic before: 20,000 lines took 9 s and 40,000 took 45 s in a debug build.
    let took = compile_lines(100_000, |i| format!("ENV V{i}=$V{}", i / 2));
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn hundred_thousand_arg_lines_compile_in_linear_time() {
    let took = compile_lines(100_000, |i| format!("ARG A{i}=${{A{}:-x}}", i / 2));
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn fifty_thousand_undefined_variables_beside_fifty_thousand_envs_compile_in_linear_time() {
    // Each finding compared its name with every ENV for a suggestion and with every finding
    // before it: 6,000 of each took 14 s in a debug build, 50,000 would take about 15 minutes.
    let took = compile_lines(100_000, |i| match i % 2 {
        0 => format!("ENV V{i}=1"),
        _ => format!("LABEL l=$W{i}"),
    });
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn twenty_thousand_copies_from_a_stage_with_twenty_thousand_envs_compile_in_linear_time() {
    // Each `COPY --from` cloned the whole compiled stage, its config included.
    let mut text = "FROM busybox AS big\n".to_string();
    for i in 0..20_000 {
        text.push_str(&format!("ENV V{i}={i}\n"));
    }
    text.push_str("FROM busybox\n");
    for i in 0..20_000 {
        text.push_str(&format!("COPY --from=big /a /a{i}\n"));
    }
    let (r, took) = compile_on_worker_stack(text);
    r.unwrap();
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn a_10_mb_line_is_cut_short_in_errors() {
    // One 10 MB line, and 1 MB ones where other errors quote them (a debug build takes a second
    // or two per 10 MB).
    let huge = "A".repeat(1_000_000);
    for text in [
        format!("FROM busybox AS 9{}\n", "A".repeat(10_000_000)),
        format!("FROM busybox\nENV X=${{{huge}\n"),
        format!("FROM busybox\nCOPY --from={huge} /a /b\n"),
        format!("FROM busybox\nRUN --{huge} true\n"),
        format!("FROM busybox\nEXPOSE {huge}\n"),
    ] {
        let head = text[..40].to_string();
        let err = failure(compile_on_worker_stack(text).0, &head);
        assert!(err.len() < 3000, "{} bytes: {}", err.len(), &err[..300]);
        assert!(err.contains("AAAA…"), "{err}");
        assert!(err.starts_with("Dockerfile:"), "{err}");
    }
}

#[test]
fn a_value_doubled_on_every_line_stops_with_an_error() {
    let mut text = "FROM busybox\nENV V=ab\n".to_string();
    for _ in 0..64 {
        text.push_str("ENV V=$V$V\n");
    }
    let err = failure(compile_on_worker_stack(text).0, "doubling");
    assert!(err.contains("longer than 1 MiB"), "{err}");
}
