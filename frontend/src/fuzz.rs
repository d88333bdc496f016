//! The bodies of the fuzz targets (`frontend/fuzz`: `cargo fuzz run parse_compile` and
//! `hostile_shapes`) and of the bounded random-input tests in the normal suite: any input is
//! parsed and, when it parses, compiled against a resolver that knows every image. Errors are
//! fine; a panic (a stack overflow aborts), an invalid graph or an error that does not render
//! in a readable length is a bug. [`hostile_shape`] turns bytes into the shapes that used to
//! crash kiln or cost it quadratic time: deep `${...}` nesting, long `FROM` and `COPY --from`
//! chains, many lines, huge lines and long patterns.

use crate::{compile, BuildOptions, ImageResolver, ResolvedImage};

struct AnyImage;

impl ImageResolver for AnyImage {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
        if reference.starts_with("missing") {
            return Err("manifest unknown".into());
        }
        Ok(ResolvedImage {
            reference: format!("docker.io/library/{reference}"),
            config: oci_spec::image::ImageConfiguration::default(),
            raw_config: serde_json::Value::Null,
        })
    }
}

/// Parses and compiles `data` (lossily decoded as UTF-8); panics only on a real bug.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(df) = crate::parse(&text) {
        let _ = df.dump();
    }
    match compile(&text, &BuildOptions::default(), &AnyImage) {
        Ok(c) => {
            if let Err(e) = c.definition.validate() {
                panic!("compiled an invalid graph: {e}\n--- input ---\n{text}");
            }
            let _ = c.definition.to_json();
        }
        Err(e) => {
            let text = e.to_string();
            // A quoted instruction, a message and the few words around them.
            let max = crate::clip::MESSAGE_CHARS + crate::clip::QUOTE_CHARS + 200;
            if text.chars().count() > max {
                panic!(
                    "an error of {} characters: {}",
                    text.chars().count(),
                    crate::clip::clip(&text, 1000)
                );
            }
        }
    }
}

/// A hostile Dockerfile made from `data`: the first byte picks the shape, the next two its size
/// (scaled to at most `max_size`), the rest fills it in. Every byte string is some Dockerfile.
#[doc(hidden)]
pub fn hostile_shape(data: &[u8], max_size: usize) -> String {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let raw = usize::from(u16::from_le_bytes([byte(1), byte(2)]));
    let n = raw * max_size / usize::from(u16::MAX);
    let pick = |i: usize, options: &[&'static str]| options[usize::from(byte(i)) % options.len()];
    let filler: String = data
        .get(3..)
        .unwrap_or_default()
        .iter()
        .map(|&b| char::from(b' ' + b % 95))
        .collect();
    let mut df = String::new();
    match byte(0) % 7 {
        0 => {
            // `${a:-${b:-...}}` n deep, in a word the compiler expands or one the shell does.
            let op = pick(3, &[":-", "-", ":+", "+", ":?", "#", "%%", "/x/", "//x/"]);
            let mut word = filler.chars().take(8).collect::<String>().replace('}', "");
            for i in 0..n {
                word = format!("${{v{i}{op}{word}}}");
            }
            let kw = pick(
                4,
                &[
                    "ENV X=",
                    "RUN echo ",
                    "COPY a ",
                    "LABEL l=",
                    "WORKDIR /",
                    "USER ",
                ],
            );
            df = format!("FROM busybox\n{kw}{word}\n");
        }
        1 => {
            df.push_str("FROM busybox AS s0\n");
            for i in 0..n {
                df.push_str(&format!("FROM s{i} AS s{}\n", i + 1));
            }
            df.push_str("RUN true\n");
        }
        2 => {
            df.push_str("FROM busybox AS s0\n");
            for i in 0..n {
                let from = pick(
                    3,
                    &["COPY --from=", "RUN --mount=type=bind,target=/m,from="],
                );
                let tail = if from.starts_with("COPY") {
                    " /a /a"
                } else {
                    " true"
                };
                df.push_str(&format!("FROM busybox AS s{}\n{from}s{i}{tail}\n", i + 1));
            }
        }
        3 => {
            df.push_str("FROM busybox\n");
            let line = pick(
                3,
                &[
                    "ENV V{i}=$V{j}",
                    "ARG A{i}=${A{j}:-x}",
                    "RUN echo {i}",
                    "LABEL l{i}=$U{j}",
                    "EXPOSE {i}",
                    "WORKDIR /w{j}",
                    "COPY a /c{i}",
                    "ENV V=$V",
                ],
            );
            for i in 0..n {
                let j = i / 2;
                df.push_str(
                    &line
                        .replace("{i}", &i.to_string())
                        .replace("{j}", &j.to_string()),
                );
                df.push('\n');
            }
        }
        4 => {
            // One huge word where an error quotes it.
            let huge: String = filler.chars().cycle().take(n.max(1)).collect();
            let shape = pick(
                4,
                &[
                    "FROM busybox AS {}",
                    "FROM {}",
                    "FROM busybox\nCOPY --from={} /a /b",
                    "FROM busybox\nRUN --{} true",
                    "FROM busybox\nEXPOSE {}",
                    "FROM busybox\nENV X=${{}",
                    "FROM busybox\nRUN <<{}",
                    "FROM --platform={} busybox",
                    "FROM busybox\nHEALTHCHECK --interval={} CMD true",
                    "{}",
                ],
            );
            df = shape.replace("{}", &huge);
            df.push('\n');
        }
        5 => {
            // A long pattern against a long value.
            let a = "a".repeat(n);
            let op = pick(3, &["#", "##", "%", "%%", "/", "//"]);
            df = format!("FROM busybox\nENV V={a}\nENV W=${{V{op}{a}*}}\n");
        }
        _ => {
            // A value doubled on every line.
            df.push_str("FROM busybox\nENV V=ab\n");
            for _ in 0..n.min(64) {
                df.push_str("ENV V=$V$V\n");
            }
        }
    }
    df
}

/// [`fuzz_one`] on [`hostile_shape`]`(data, max_size)`.
#[doc(hidden)]
pub fn fuzz_shape(data: &[u8], max_size: usize) {
    fuzz_one(hostile_shape(data, max_size).as_bytes());
}
