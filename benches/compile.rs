//! Parse + compile time of a generated 1,000-instruction multi-stage Dockerfile, per instruction:
//! the `compile` case of `cargo xtask bench --cases compile`, or by itself
//! `cargo bench -p kiln-frontend --bench compile [-- ITERATIONS]` (a bench target of
//! `kiln-frontend`, kept here beside the whole-build benchmarks).

use kiln_frontend::{compile, BuildOptions, ImageResolver, ResolvedImage};
use std::time::Instant;

struct AnyImage;

impl ImageResolver for AnyImage {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
        Ok(ResolvedImage {
            reference: format!("docker.io/library/{reference}@sha256:{}", "0".repeat(64)),
            config: oci_spec::image::ImageConfiguration::default(),
            raw_config: serde_json::Value::Null,
        })
    }
}

/// 20 stages of 50 instructions each (FROM included): every kind of instruction, variable
/// expansion, heredocs, `COPY --from` of earlier stages, all needed by the last stage.
///
/// Each stage copies from the stage before, except that `s10` copies from `s0` and the last
/// stage's second `COPY --from` is of `s9`: two chains of ten, since the frontend nests at most
/// 16 stages copying from each other (`MAX_STAGE_NESTING`) and one chain of 20 is refused.
fn dockerfile() -> (String, usize) {
    let mut s = String::from("# syntax=docker/dockerfile:1\nARG BASE=busybox\n");
    let mut n = 1;
    for stage in 0..20 {
        s.push_str(&format!("FROM ${{BASE}} AS s{stage}\n"));
        n += 1;
        let mut i = 1;
        while i < 50 {
            let line = match i % 12 {
                0 => format!("ENV V{i}=value{i} P{i}=\"${{V{i}:-x}}/bin\"\n"),
                1 => format!("RUN echo {stage}-{i} && mkdir -p /out/{i} > /dev/null\n"),
                2 => format!("COPY --chown=1:1 src/{i}/*.txt /app/{i}/\n"),
                3 => format!("WORKDIR /work/${{V{}}}\n", i - 3),
                4 => format!("LABEL l{i}=\"v {i}\" other{i}=x\n"),
                5 if stage > 0 => format!("COPY --from=s{} /out /from/{i}\n", copied(stage, i)),
                5 => format!("ADD --link archive{i}.tar.gz /opt/{i}/\n"),
                6 => format!("ARG A{i}=default{i}\n"),
                7 => format!("RUN --mount=type=cache,target=/cache/{i} <<EOF\nset -e\necho ${{A{}:-a}}\nEOF\n", i - 1),
                8 => format!("EXPOSE {}/tcp\n", 8000 + i),
                9 => format!("USER {}:{}\n", 1000 + i, 1000 + i),
                10 => "HEALTHCHECK --interval=30s CMD [\"true\"]\n".to_string(),
                _ => format!("CMD [\"run\", \"{i}\"]\n"),
            };
            s.push_str(&line);
            i += 1;
            n += 1;
        }
    }
    (s, n)
}

/// The stage that stage `stage`'s `COPY --from` on line `i` of the stage copies.
fn copied(stage: usize, i: usize) -> usize {
    match (stage, i) {
        (10, _) => 0,
        (19, 17) => 9,
        _ => stage - 1,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; the first number given is the iteration count. `--test`
    // runs one iteration: a quick check that the Dockerfile still compiles.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iterations: u32 = if args.iter().any(|a| a == "--test") {
        1
    } else {
        args.iter()
            .find_map(|a| a.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(200)
    };
    let (text, instructions) = dockerfile();
    let opts = BuildOptions::default();
    let check = compile(&text, &opts, &AnyImage).unwrap_or_else(|e| panic!("{e}"));
    let ops = check.definition.ops.len();
    // Warm up, then measure parse alone and parse + compile.
    for _ in 0..5 {
        let _ = compile(&text, &opts, &AnyImage);
    }
    let t = Instant::now();
    for _ in 0..iterations {
        let df = kiln_frontend::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        std::hint::black_box(df);
    }
    let parse = t.elapsed() / iterations;
    let t = Instant::now();
    for _ in 0..iterations {
        let c = compile(&text, &opts, &AnyImage).unwrap_or_else(|e| panic!("{e}"));
        std::hint::black_box(c);
    }
    let total = t.elapsed() / iterations;
    println!(
        "{instructions} instructions, {ops} ops, {iterations} iterations: parse {parse:?} \
         ({:.2} µs/instruction), parse+compile {total:?} ({:.2} µs/instruction)",
        parse.as_secs_f64() * 1e6 / instructions as f64,
        total.as_secs_f64() * 1e6 / instructions as f64,
    );
}
