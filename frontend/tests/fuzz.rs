//! The fuzz target's body (`kiln_frontend::fuzz_one`) on random Dockerfiles for a bounded time,
//! so the normal suite on stable Rust catches panics too. Inputs are assembled from the words
//! and characters the parser, the expander and the compiler treat specially, so they reach deep
//! code rather than failing on the first line.

use std::time::{Duration, Instant};

const PIECES: &[&str] = &[
    "FROM busybox",
    "FROM busybox AS b",
    "FROM b",
    "FROM --platform=$BUILDPLATFORM a",
    "\nRUN ",
    "\nCOPY ",
    "\nADD ",
    "\nENV ",
    "\nARG ",
    "\nLABEL ",
    "\nONBUILD ",
    "\nHEALTHCHECK ",
    "\nCMD ",
    "\nENTRYPOINT ",
    "\nWORKDIR ",
    "\nUSER ",
    "\nSHELL ",
    "\nEXPOSE ",
    "\nVOLUME ",
    "\nSTOPSIGNAL ",
    "\nMAINTAINER ",
    "# escape=`\n",
    "# syntax=docker/dockerfile:1\n",
    "# check=error=true\n",
    "\\\n",
    "`",
    "\n",
    " ",
    "\t",
    "\"",
    "'",
    "$",
    "${A:-x}",
    "${A#*}",
    "${",
    "}",
    ":",
    "-",
    "?",
    "#",
    "%",
    "/",
    "*",
    "[",
    "]",
    "!",
    "<<EOF\n#!/bin/sh\nx\nEOF\n",
    "<<-E\n\tx\nE\n",
    "<<",
    "=",
    "--from=b",
    "--from=0",
    "--link",
    "--parents",
    "--exclude=*",
    "--chown=1:2",
    "--chmod=755",
    "--checksum=sha256:",
    "--mount=type=cache,target=/c",
    "--mount=type=bind,from=b",
    "--network=none",
    "http://127.0.0.1/x",
    "[\"a\", \"b\"]",
    "[1]",
    "a",
    "b",
    "A",
    "A=1",
    "é",
    "\u{a0}",
    "0",
    "**",
    ".",
    "..",
    "/./",
    "NONE",
    "--interval=1s",
];

#[test]
fn random_dockerfiles_never_panic_the_parser_or_compiler() {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut runs = 0;
    while Instant::now() < deadline && runs < 50_000 {
        let mut text = String::new();
        for _ in 0..(rand() % 40) {
            text.push_str(PIECES[(rand() % PIECES.len() as u64) as usize]);
        }
        kiln_frontend::fuzz_one(text.as_bytes());
        // Raw bytes as well, invalid UTF-8 included.
        let raw: Vec<u8> = (0..rand() % 64).map(|_| rand() as u8).collect();
        kiln_frontend::fuzz_one(&raw);
        runs += 1;
    }
    assert!(runs > 100, "only {runs} inputs in the time budget");
}

/// The shapes that crashed kiln or made it quadratic (deep `${...}` nesting, long `FROM` and
/// `COPY --from` chains, many lines, huge lines, long patterns, doubling values), with random
/// sizes: each must compile or fail with a short error, without a stack overflow.
#[test]
fn hostile_shapes_never_crash_the_parser_or_compiler() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Every shape at its largest once, then random ones for the rest of the budget. Each input
    // runs on a thread with half the stack of the tokio thread `kiln build` compiles on.
    let run = |data: Vec<u8>, max_size: usize| {
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || kiln_frontend::fuzz_shape(&data, max_size))
            .unwrap()
            .join()
            .unwrap();
    };
    for shape in 0..7u8 {
        for variant in 0..4u8 {
            run(vec![shape, 0xff, 0xff, variant, variant, b'x'], 2000);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut runs = 0;
    while Instant::now() < deadline {
        let data: Vec<u8> = (0..16).map(|_| rand() as u8).collect();
        run(data, 2000);
        runs += 1;
    }
    assert!(runs > 10, "only {runs} inputs in the time budget");
}
