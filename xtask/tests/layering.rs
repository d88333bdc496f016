//! The crate layering of docs/architecture.md ("The arrows"), enforced: a kiln crate may depend
//! only on the kiln crates its arrow allows. Adding a dependency that goes the other way fails
//! here (as buck2 does).

use std::collections::BTreeMap;
use std::path::Path;

/// The arrows of docs/architecture.md: crate directory → kiln crates it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("cli", &["kiln-daemon", "kiln-exec"]),
    (
        "daemon",
        &[
            "kiln-llb",
            "kiln-frontend",
            "kiln-solver",
            "kiln-exporter",
            "kiln-registry",
            "kiln-cache",
            "kiln-exec",
        ],
    ),
    (
        "solver",
        &["kiln-llb", "kiln-cache", "kiln-exec", "kiln-registry"],
    ),
    ("exporter", &["kiln-cache", "kiln-registry"]),
    ("frontend", &["kiln-llb"]),
    ("llb", &[]),
    ("cache", &[]),
    ("exec", &[]),
    ("registry", &[]),
];

/// The kiln crates named in a Cargo.toml's dependency tables (normal, dev and build).
fn kiln_deps(manifest: &str) -> Vec<String> {
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line.contains("dependencies");
            continue;
        }
        if in_deps {
            if let Some(name) = line.split(['=', '.', ' ']).next() {
                if name.starts_with("kiln-") {
                    deps.push(name.to_string());
                }
            }
        }
    }
    deps
}

#[test]
fn crates_depend_only_along_designs_arrows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut violations = BTreeMap::new();
    for (dir, allowed) in ALLOWED {
        let path = root.join(dir).join("Cargo.toml");
        let manifest = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for dep in kiln_deps(&manifest) {
            if !allowed.contains(&dep.as_str()) {
                violations.entry(*dir).or_insert_with(Vec::new).push(dep);
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependencies against docs/architecture.md's arrows (crate → banned deps): {violations:?}"
    );
}

#[test]
fn the_checker_sees_every_dependency_table() {
    let manifest = "[dependencies]\nkiln-llb.workspace = true\nserde = \"1\"\n[dev-dependencies]\nkiln-cache = { path = \"../cache\" }\n";
    assert_eq!(kiln_deps(manifest), vec!["kiln-llb", "kiln-cache"]);
}

#[test]
fn every_workspace_crate_is_covered() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ws = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = ws
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    for m in members.split('"').skip(1).step_by(2) {
        if m == "xtask" {
            continue;
        }
        assert!(
            ALLOWED.iter().any(|(d, _)| *d == m),
            "crate `{m}` has no layering entry: add its arrow here and in docs/architecture.md"
        );
    }
}
