//! Every declared dependency is used: a crate's `[dependencies]`, `[dev-dependencies]` and
//! `[build-dependencies]` must each be named in that crate's sources, and every entry of
//! `[workspace.dependencies]` must be declared by some member. cargo-machete's rule, written as a
//! test so that CI needs no extra tool. A dependency nobody uses still costs every build its
//! compile time and every audit its code (see docs/architecture.md, "Key decisions").

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One dependency line of a manifest: its key (the name the code uses, `-` and all) and table.
#[derive(Debug, PartialEq, Eq)]
struct Dep {
    name: String,
    table: String,
}

/// A manifest's `key = value` lines with the table each is in (`None` before the first header).
/// Lines inside a value that spans several lines (`features = [` ... `]`) are not keys.
fn entries(manifest: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let mut table = None;
    let mut depth = 0i32;
    for line in manifest.lines() {
        let line = line.trim();
        if depth == 0 && line.starts_with('[') {
            table = Some(line.trim_matches(['[', ']']).trim().to_string());
            continue;
        }
        if depth == 0 && !line.is_empty() && !line.starts_with('#') && line.contains('=') {
            out.push((table.clone(), line.to_string()));
        }
        let code = line.split('#').next().unwrap_or("");
        for c in code.chars() {
            match c {
                '{' | '[' => depth += 1,
                '}' | ']' => depth -= 1,
                _ => {}
            }
        }
    }
    out
}

/// The key of a `key = ...` or `key.workspace = true` line.
fn key(line: &str) -> String {
    let key = line.split(['=', '.']).next().unwrap_or("");
    key.trim().trim_matches('"').to_string()
}

/// The dependencies a manifest declares in tables whose name ends in `dependencies`, skipping
/// `[workspace.dependencies]` (see [`workspace_deps`]). Handles `name = "1"`,
/// `name = { .. }`, `name.workspace = true` and `[target.'cfg(..)'.dependencies]`.
fn declared_deps(manifest: &str) -> Vec<Dep> {
    entries(manifest)
        .into_iter()
        .filter_map(|(table, line)| {
            let table = table?;
            (table.ends_with("dependencies") && table != "workspace.dependencies").then(|| Dep {
                name: key(&line),
                table,
            })
        })
        .collect()
}

/// The keys of `[workspace.dependencies]`.
fn workspace_deps(manifest: &str) -> Vec<String> {
    entries(manifest)
        .into_iter()
        .filter(|(table, _)| table.as_deref() == Some("workspace.dependencies"))
        .map(|(_, line)| key(&line))
        .collect()
}

/// The `path = "..."` of the manifest's target tables (`[[bench]]`, `[[test]]`, `[[bin]]`...):
/// a target may live outside the crate's directory (frontend's bench is in `benches/`).
fn target_paths(manifest: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut in_target = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_target = line.starts_with("[[");
            continue;
        }
        if in_target && key(line) == "path" {
            if let Some(value) = line.split('"').nth(1) {
                paths.push(value.to_string());
            }
        }
    }
    paths
}

/// Whether `source` names the crate `ident` (its name with `-` as `_`) as cargo-machete looks
/// for it: a path `ident::...`, `use ident;`/`use ident as ...`, or `extern crate ident`. A
/// word merely mentioned in prose ("a tar archive") does not count.
fn references(source: &str, ident: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut from = 0;
    while let Some(at) = source[from..].find(ident) {
        let start = from + at;
        let end = start + ident.len();
        from = end;
        let before = &source[..start];
        let after = &source[end..];
        if before.chars().next_back().is_some_and(is_ident)
            || after.chars().next().is_some_and(is_ident)
        {
            continue;
        }
        let before = before.trim_end();
        let imported = (before.ends_with("use") || before.ends_with("extern crate"))
            && (after.starts_with(';') || after.starts_with(" as "));
        if after.starts_with("::") || imported {
            return true;
        }
    }
    false
}

/// The Rust files of a crate that cargo builds: src/, tests/, examples/, benches/, build.rs, and
/// target paths named in its manifest.
fn crate_sources(dir: &Path, manifest: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in ["src", "tests", "examples", "benches"] {
        collect_rs(&dir.join(sub), &mut files);
    }
    let build = dir.join("build.rs");
    if build.is_file() {
        files.push(build);
    }
    for path in target_paths(manifest) {
        let p = dir.join(path);
        if p.is_file() && !files.contains(&p) {
            files.push(p);
        }
    }
    files
}

fn collect_rs(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            collect_rs(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The workspace's member directories, from its `members = [...]` line.
fn members(workspace_manifest: &str) -> Vec<String> {
    let line = workspace_manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("the workspace Cargo.toml has a `members = [...]` line");
    line.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_declared_dependency_is_used_by_its_crate() {
    let root = workspace_root();
    let mut unused = Vec::new();
    for member in members(&read(&root.join("Cargo.toml"))) {
        let dir = root.join(&member);
        let manifest = read(&dir.join("Cargo.toml"));
        let sources: Vec<String> = crate_sources(&dir, &manifest)
            .iter()
            .map(|p| read(p))
            .collect();
        for dep in declared_deps(&manifest) {
            let ident = dep.name.replace('-', "_");
            if !sources.iter().any(|s| references(s, &ident)) {
                unused.push(format!(
                    "`{member}` declares `{}` in [{}] but no source of it names `{ident}::`: \
                     use it or remove the line from {member}/Cargo.toml",
                    dep.name, dep.table
                ));
            }
        }
    }
    assert!(
        unused.is_empty(),
        "unused dependencies:\n  {}",
        unused.join("\n  ")
    );
}

#[test]
fn every_workspace_dependency_is_declared_by_a_member() {
    let root = workspace_root();
    let ws = read(&root.join("Cargo.toml"));
    let mut declared = BTreeSet::new();
    for member in members(&ws) {
        for dep in declared_deps(&read(&root.join(&member).join("Cargo.toml"))) {
            declared.insert(dep.name);
        }
    }
    let unused: Vec<String> = workspace_deps(&ws)
        .into_iter()
        .filter(|d| !declared.contains(d))
        .collect();
    assert!(
        unused.is_empty(),
        "[workspace.dependencies] in Cargo.toml that no member declares: {unused:?}; \
         remove them or declare them where they are used"
    );
}

#[test]
fn the_checker_reads_every_dependency_table() {
    let manifest = r#"
[package]
name = "x"
edition.workspace = true

[dependencies]
kiln-llb.workspace = true
serde = { version = "1", features = ["derive"] }
# a comment = not a dependency
tokio = { version = "1", features = [
    "rt",
    default-features = false,
] }

[dev-dependencies]
tempfile = "3"

[target.'cfg(unix)'.dependencies]
libc.workspace = true

[build-dependencies]
cc = "1"

[workspace.dependencies]
walkdir = "2"

[[bench]]
name = "compile"
path = "../benches/compile.rs"
"#;
    let names: Vec<(String, String)> = declared_deps(manifest)
        .into_iter()
        .map(|d| (d.name, d.table))
        .collect();
    let want = [
        ("kiln-llb", "dependencies"),
        ("serde", "dependencies"),
        ("tokio", "dependencies"),
        ("tempfile", "dev-dependencies"),
        ("libc", "target.'cfg(unix)'.dependencies"),
        ("cc", "build-dependencies"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(names, want);
    assert_eq!(workspace_deps(manifest), vec!["walkdir"]);
    assert_eq!(target_paths(manifest), vec!["../benches/compile.rs"]);
}

#[test]
fn only_code_that_names_the_crate_counts_as_a_use() {
    assert!(references("use kiln_llb::Op;", "kiln_llb"));
    assert!(references("#[derive(serde::Serialize)]", "serde"));
    assert!(references("let x = ::tar::Archive::new(f);", "tar"));
    assert!(references("extern crate libc;", "libc"));
    assert!(references("use prost as pb;", "prost"));
    // Prose, other crates and longer names are not uses.
    assert!(!references("// unpack a tar archive", "tar"));
    assert!(!references("use tarpit::Pit;", "tar"));
    assert!(!references("use kiln_llb_extra::Op;", "kiln_llb"));
    assert!(!references("let walkdir = 1;", "walkdir"));
    assert!(!references("my_petgraph::Graph::new()", "petgraph"));
}
