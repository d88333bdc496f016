//! Conformance against BuildKit's own test data (`../shared/conformance`, see its README): the
//! parser corpus (positive cases compared dump for dump, negative cases must fail) and the shell
//! expansion vectors. Every failing case is collected so one run lists them all.

use std::path::{Path, PathBuf};

use kiln_frontend::{expand_word, expand_words, parse};

/// The corpus directory, or `None` (after printing why) when it is missing and not required.
fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("KILN_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("KILN_CONFORMANCE").is_some() {
        panic!(
            "conformance corpus not found at `{}` but `KILN_CONFORMANCE` is set: put the corpus \
             there or point `KILN_CONFORMANCE_DIR` at it",
            dir.display()
        );
    }
    eprintln!(
        "skipping: conformance corpus not found at `{}` (set `KILN_CONFORMANCE_DIR`; set \
         `KILN_CONFORMANCE` to make this a failure)",
        dir.display()
    );
    None
}

fn case_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", path.display()))
}

fn report(what: &str, total: usize, failures: &[String]) {
    eprintln!("{what}: {} of {total} cases pass", total - failures.len());
    assert!(
        failures.is_empty(),
        "{what}: {} of {total} cases fail:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn moby_parser_positive() {
    let Some(root) = corpus() else { return };
    let dirs = case_dirs(&root.join("moby-parser/testfiles"));
    assert!(!dirs.is_empty(), "no positive parser cases found");
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let expected = read(&dir.join("result"));
        let text = read(&dir.join("Dockerfile"));
        let outcome = std::panic::catch_unwind(|| parse(&text));
        match outcome {
            Err(_) => failures.push(format!("{name}: parser panicked")),
            Ok(Err(e)) => failures.push(format!("{name}: parse failed: {e}")),
            Ok(Ok(df)) => {
                let got = df.dump();
                if got != expected {
                    failures.push(format!("{name}:\n--- expected\n{expected}--- got\n{got}"));
                }
            }
        }
    }
    report("moby parser testfiles", dirs.len(), &failures);
}

#[test]
fn moby_parser_negative() {
    let Some(root) = corpus() else { return };
    let dirs = case_dirs(&root.join("moby-parser/testfiles-negative"));
    assert!(!dirs.is_empty(), "no negative parser cases found");
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let text = read(&dir.join("Dockerfile"));
        match std::panic::catch_unwind(|| parse(&text)) {
            Err(_) => failures.push(format!("{name}: parser panicked")),
            Ok(Ok(df)) => failures.push(format!("{name}: accepted, parsed as:\n{}", df.dump())),
            Ok(Err(e)) => {
                let msg = e.to_string();
                if !msg.starts_with("Dockerfile:") {
                    failures.push(format!("{name}: error lacks a location: {msg}"));
                }
            }
        }
    }
    report("moby parser testfiles-negative", dirs.len(), &failures);
}

#[test]
fn moby_shell_env_var_test() {
    let Some(root) = corpus() else { return };
    let text = read(&root.join("moby-shell/envVarTest"));
    let env = |name: &str| -> Option<String> {
        match name {
            "PWD" => Some("/home".into()),
            "SHELL" => Some("bash".into()),
            "KOREAN" => Some("한국어".into()),
            "NULL" => Some(String::new()),
            _ => None,
        }
    };
    let mut failures = Vec::new();
    let mut total = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.splitn(3, '|').map(str::trim).collect();
        let [platform, input, expected] = fields[..] else {
            failures.push(format!("line {}: malformed: {line:?}", n + 1));
            continue;
        };
        if platform == "W" {
            continue;
        }
        total += 1;
        let got = std::panic::catch_unwind(|| expand_word(input, &env, '\\'));
        let ok = match (&got, expected) {
            (Err(_), _) => false,
            (Ok(Err(_)), "error") => true,
            (Ok(Ok(word)), exp) => exp != "error" && word == exp,
            (Ok(Err(_)), _) => false,
        };
        if !ok {
            let shown = match got {
                Err(_) => "panic".to_string(),
                Ok(r) => format!("{r:?}"),
            };
            failures.push(format!(
                "line {}: {input:?}: expected {expected:?}, got {shown}",
                n + 1
            ));
        }
    }
    report("moby shell envVarTest", total, &failures);
}

#[test]
fn moby_shell_words_test() {
    let Some(root) = corpus() else { return };
    let text = read(&root.join("moby-shell/wordsTest"));
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(assign) = line.strip_prefix("ENV ") {
            let assign = assign.trim_start();
            match assign.split_once('=') {
                Some((k, v)) => vars.push((k.to_string(), v.to_string())),
                None => failures.push(format!("line {}: malformed ENV: {line:?}", n + 1)),
            }
            continue;
        }
        let Some((input, expected)) = line.split_once('|') else {
            failures.push(format!("line {}: malformed: {line:?}", n + 1));
            continue;
        };
        let input = input.trim();
        let expected = expected.trim_start();
        total += 1;
        let env = |name: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let got = std::panic::catch_unwind(|| expand_words(input, &env, '\\'));
        let ok = match (&got, expected) {
            (Err(_), _) => false,
            (Ok(Err(_)), "error") => true,
            (Ok(Ok(words)), exp) => exp != "error" && words.join(",") == exp,
            (Ok(Err(_)), _) => false,
        };
        if !ok {
            let shown = match got {
                Err(_) => "panic".to_string(),
                Ok(r) => format!("{r:?}"),
            };
            failures.push(format!(
                "line {}: {input:?}: expected {expected:?}, got {shown}",
                n + 1
            ));
        }
    }
    report("moby shell wordsTest", total, &failures);
}
