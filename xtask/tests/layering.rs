//! The crate layering of docs/architecture.md ("The arrows"), enforced: a kiln crate may depend
//! only on the kiln crates its arrow allows. Adding a dependency that goes the other way fails
//! here (as buck2 does).

use std::collections::BTreeMap;
use std::path::Path;

/// The arrows of docs/architecture.md: crate directory → kiln crates it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "cli",
        &["kiln-engine", "kiln-exec", "kiln-client", "kiln-daemon"],
    ),
    ("daemon", &["kiln-api", "kiln-engine"]),
    ("client", &["kiln-api"]),
    ("api", &[]),
    (
        "engine",
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
    ("cache", &["kiln-sys"]),
    ("exec", &["kiln-sys"]),
    ("sys", &[]),
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

// ---------------------------------------------------------------------------------------------
// Module cycles inside a crate.
//
// A module may use what its ancestors define (a crate's `lib.rs` holds its API types, a parent
// module the types its children share), so references to an ancestor are not edges. Every
// other reference (`crate::a::b`, `super::x`, `self::x`, a child module by name, or a name a
// `use` brought into scope, renamed or by a glob) is an edge to the deepest module the path
// names, following `pub use` re-exports (renamed, or by a glob) one step, and the graph
// of those edges must have no cycle: two modules that need each other are one module, or share
// a piece that belongs below both.

/// A module path inside a crate: `[]` is the crate root, `["fileops", "batch"]` is
/// `crate::fileops::batch`.
type ModPath = Vec<String>;

/// The module a source file under `src/` defines (`lib.rs`/`main.rs` → root, `a/b.rs` and
/// `a/b/mod.rs` → `a::b`).
fn module_of(rel: &Path) -> ModPath {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if !(parts.is_empty() && (stem == "lib" || stem == "main")) && stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Sep, // `::`
    Open,
    Close,
    Comma,
    /// `*`, in a glob import.
    Star,
    /// `#[cfg(test)]`: the `mod` that follows is test code, which may use any module.
    CfgTest,
    Other,
}

/// Rust source as the tokens that paths are made of; comments, strings and chars dropped.
fn tokens(src: &str) -> Vec<Tok> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if b[i..].starts_with(b"#[cfg(test)]") {
            out.push(Tok::CfgTest);
            i += "#[cfg(test)]".len();
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'r' && matches!(b.get(i + 1), Some(b'#') | Some(b'"')) {
            // A raw string r#"..."#, or an identifier starting with `r`.
            let mut j = i + 1;
            while b.get(j) == Some(&b'#') {
                j += 1;
            }
            if b.get(j) == Some(&b'"') {
                let hashes = j - i - 1;
                let mut k = j + 1;
                loop {
                    if k >= b.len() {
                        break;
                    }
                    if b[k] == b'"'
                        && b[k + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|&&h| h == b'#')
                            .count()
                            == hashes
                    {
                        k += 1 + hashes;
                        break;
                    }
                    k += 1;
                }
                i = k;
                out.push(Tok::Other);
            } else {
                i = lex_ident(b, i, &mut out);
            }
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Other);
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if b.get(i + 1) == Some(&b'\\') {
                i += 2;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&b'\'') {
                i += 3;
            } else {
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
            }
            out.push(Tok::Other);
        } else if c.is_ascii_alphabetic() || c == b'_' {
            i = lex_ident(b, i, &mut out);
        } else if c == b':' && b.get(i + 1) == Some(&b':') {
            out.push(Tok::Sep);
            i += 2;
        } else {
            match c {
                b'{' => out.push(Tok::Open),
                b'}' => out.push(Tok::Close),
                b',' => out.push(Tok::Comma),
                b'*' => out.push(Tok::Star),
                c if c.is_ascii_whitespace() => {}
                _ => out.push(Tok::Other),
            }
            i += 1;
        }
    }
    out
}

fn lex_ident(b: &[u8], mut i: usize, out: &mut Vec<Tok>) -> usize {
    let start = i;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    out.push(Tok::Ident(
        String::from_utf8_lossy(&b[start..i]).into_owned(),
    ));
    i
}

/// A path in the source, its `{...}` groups expanded, and whether it is re-exported
/// (`pub use`, `pub(crate) use`).
struct SrcPath {
    segs: Vec<String>,
    reexport: bool,
    /// In a `use`: it brings a name into the module's scope.
    import: bool,
    /// `use a::b as c`: `c`.
    alias: Option<String>,
    /// `use a::*`: every name of `a`.
    glob: bool,
}

/// A path as `path_tree` finds it: its segments, its `as` name, whether it ends in `::*`.
struct Found {
    segs: Vec<String>,
    alias: Option<String>,
    glob: bool,
}

/// Every path of two or more segments in `toks`.
fn paths(toks: &[Tok]) -> Vec<SrcPath> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if toks[i] == Tok::CfgTest {
            i = skip_test_module(toks, i + 1);
            continue;
        }
        let starts = matches!(toks[i], Tok::Ident(_))
            && matches!(toks.get(i + 1), Some(Tok::Sep))
            && !matches!(i.checked_sub(1).map(|p| &toks[p]), Some(Tok::Sep));
        if !starts {
            i += 1;
            continue;
        }
        let reexport = is_pub_use(toks, i);
        let import = is_use(toks, i);
        let mut found = Vec::new();
        i = path_tree(toks, i, Vec::new(), &mut found);
        out.extend(found.into_iter().map(|f| SrcPath {
            segs: f.segs,
            reexport,
            import,
            alias: f.alias,
            glob: f.glob,
        }));
    }
    out
}

/// After `#[cfg(test)]`: the index past `mod NAME { ... }`, or `i` for anything else.
fn skip_test_module(toks: &[Tok], i: usize) -> usize {
    let is = |j: usize, s: &str| matches!(toks.get(j), Some(Tok::Ident(x)) if x == s);
    if !(is(i, "mod") && matches!(toks.get(i + 1), Some(Tok::Ident(_))))
        || toks.get(i + 2) != Some(&Tok::Open)
    {
        return i;
    }
    let mut depth = 0usize;
    for (j, t) in toks.iter().enumerate().skip(i + 2) {
        match t {
            Tok::Open => depth += 1,
            Tok::Close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

/// Whether the path at `i` follows `use` (any visibility).
fn is_use(toks: &[Tok], i: usize) -> bool {
    i > 0 && matches!(&toks[i - 1], Tok::Ident(x) if x == "use")
}

/// Whether the path at `i` follows `pub use` or `pub(...) use`.
fn is_pub_use(toks: &[Tok], i: usize) -> bool {
    let ident = |j: usize, s: &str| matches!(toks.get(j), Some(Tok::Ident(x)) if x == s);
    if i == 0 || !ident(i - 1, "use") {
        return false;
    }
    let mut j = i - 1;
    // `pub(crate) use`: `pub`, `(`, `crate`, `)` are Ident/Other tokens.
    for _ in 0..4 {
        if j == 0 {
            return false;
        }
        j -= 1;
        if ident(j, "pub") {
            return true;
        }
    }
    false
}

/// Parses `a::b::{c, d::e as f, g::*}` from `i`, pushing each full path; returns the index
/// after it.
fn path_tree(toks: &[Tok], mut i: usize, mut prefix: Vec<String>, out: &mut Vec<Found>) -> usize {
    // The end of one path: its `as NAME`, if any.
    let end = |i: usize, segs: Vec<String>, out: &mut Vec<Found>| -> usize {
        let is_as = matches!(toks.get(i), Some(Tok::Ident(x)) if x == "as");
        match toks.get(i + 1) {
            Some(Tok::Ident(alias)) if is_as => {
                out.push(Found {
                    segs,
                    alias: Some(alias.clone()),
                    glob: false,
                });
                i + 2
            }
            _ => {
                out.push(Found {
                    segs,
                    alias: None,
                    glob: false,
                });
                i
            }
        }
    };
    loop {
        match toks.get(i) {
            Some(Tok::Ident(s)) => {
                prefix.push(s.clone());
                i += 1;
            }
            Some(Tok::Star) => {
                out.push(Found {
                    segs: prefix,
                    alias: None,
                    glob: true,
                });
                return i + 1;
            }
            Some(Tok::Open) => {
                i += 1;
                loop {
                    match toks.get(i) {
                        Some(Tok::Close) => return i + 1,
                        Some(Tok::Comma) => i += 1,
                        Some(Tok::Ident(_)) | Some(Tok::Open) | Some(Tok::Star) => {
                            i = path_tree(toks, i, prefix.clone(), out);
                        }
                        None => return i,
                        Some(_) => i += 1,
                    }
                }
            }
            _ => return end(i, prefix, out),
        }
        if matches!(toks.get(i), Some(Tok::Sep)) {
            i += 1;
        } else {
            return end(i, prefix, out);
        }
    }
}

/// The names a module's source defines (`fn`, `struct`, `mod`...): what a glob re-export of it
/// brings. Over-counting is harmless: a name is looked up only when a path ends in it.
fn defined_names(toks: &[Tok]) -> std::collections::BTreeSet<String> {
    const ITEMS: &[&str] = &[
        "fn", "struct", "enum", "union", "trait", "type", "const", "static", "mod",
    ];
    toks.windows(2)
        .filter_map(|w| match w {
            [Tok::Ident(k), Tok::Ident(name)] if ITEMS.contains(&k.as_str()) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// The module graph of one crate: for each module, the modules it uses (with one reference
/// that shows it, for the error).
fn module_graph(files: &[(ModPath, String)]) -> BTreeMap<ModPath, BTreeMap<ModPath, String>> {
    let modules: std::collections::BTreeSet<ModPath> =
        files.iter().map(|(m, _)| m.clone()).collect();
    let parsed: Vec<(ModPath, Vec<SrcPath>)> = files
        .iter()
        .map(|(m, src)| (m.clone(), paths(&tokens(src))))
        .collect();
    let defined: BTreeMap<ModPath, std::collections::BTreeSet<String>> = files
        .iter()
        .map(|(m, src)| (m.clone(), defined_names(&tokens(src))))
        .collect();

    // The absolute form of a path written in `module`, if it starts inside the crate: at
    // `crate`, `self`, `super` or a child module.
    let rooted = |module: &ModPath, segs: &[String]| -> Option<Vec<String>> {
        let mut base = module.clone();
        let mut rest = segs;
        match rest.first()?.as_str() {
            "crate" => {
                base.clear();
                rest = &rest[1..];
            }
            "self" => rest = &rest[1..],
            "super" => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            first => {
                let mut child = module.clone();
                child.push(first.to_string());
                if !modules.contains(&child) {
                    return None;
                }
            }
        }
        base.extend(rest.iter().cloned());
        // `use a::b::{self}` names `a::b`.
        if base.last().map(String::as_str) == Some("self") {
            base.pop();
        }
        Some(base)
    };
    // The deepest module an absolute path names, and what follows it.
    let deepest = |abs: &[String]| -> (ModPath, Option<String>) {
        let mut n = abs.len();
        while n > 0 && !modules.contains(&abs[..n]) {
            n -= 1;
        }
        (abs[..n].to_vec(), abs.get(n).cloned())
    };
    // The name a `use` path brings into scope.
    let bound = |p: &SrcPath| -> Option<String> {
        p.alias
            .clone()
            .or_else(|| p.segs.iter().rev().find(|s| *s != "self").cloned())
    };

    // What each module's `use`s bring into scope: names (`use super::b`, `use crate::c as d`)
    // and globs (`use super::*`), so a path that starts at such a name is followed too.
    let mut imports: BTreeMap<ModPath, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut globs: BTreeMap<ModPath, Vec<ModPath>> = BTreeMap::new();
    for (module, ps) in &parsed {
        for p in ps.iter().filter(|p| p.import) {
            let Some(abs) = rooted(module, &p.segs) else {
                continue;
            };
            if p.glob {
                if modules.contains(&abs) {
                    globs.entry(module.clone()).or_default().push(abs);
                }
            } else if let Some(name) = bound(p) {
                imports.entry(module.clone()).or_default().insert(name, abs);
            }
        }
    }
    let absolute = |module: &ModPath, segs: &[String]| -> Option<Vec<String>> {
        if let Some(abs) = rooted(module, segs) {
            return Some(abs);
        }
        let (first, rest) = segs.split_first()?;
        let mut abs = match imports.get(module).and_then(|i| i.get(first)) {
            Some(abs) => abs.clone(),
            None => {
                let from = globs.get(module)?.iter().find(|g| {
                    let mut child = (*g).clone();
                    child.push(first.clone());
                    modules.contains(&child)
                })?;
                let mut child = from.clone();
                child.push(first.clone());
                child
            }
        };
        abs.extend(rest.iter().cloned());
        Some(abs)
    };

    // Re-exports: (module, name) → the module the name comes from; and glob re-exports
    // (`pub use a::*`): module → the modules whose names it passes on.
    let mut reexports: BTreeMap<(ModPath, String), ModPath> = BTreeMap::new();
    let mut reexport_globs: BTreeMap<ModPath, Vec<ModPath>> = BTreeMap::new();
    for (module, ps) in &parsed {
        for p in ps.iter().filter(|p| p.reexport) {
            let Some(abs) = absolute(module, &p.segs) else {
                continue;
            };
            let (target, _) = deepest(&abs);
            if target == *module {
                continue;
            }
            if p.glob {
                if target == abs {
                    reexport_globs
                        .entry(module.clone())
                        .or_default()
                        .push(target);
                }
            } else if let Some(name) = bound(p) {
                reexports.insert((module.clone(), name), target);
            }
        }
    }

    let mut graph: BTreeMap<ModPath, BTreeMap<ModPath, String>> = BTreeMap::new();
    for (module, ps) in &parsed {
        let edges = graph.entry(module.clone()).or_default();
        for p in ps {
            let Some(abs) = absolute(module, &p.segs) else {
                continue;
            };
            let (mut target, name) = deepest(&abs);
            if let Some(name) = name {
                let through_glob = || {
                    reexport_globs.get(&target).and_then(|gs| {
                        gs.iter()
                            .find(|g| defined.get(*g).is_some_and(|d| d.contains(&name)))
                    })
                };
                if let Some(t) = reexports
                    .get(&(target.clone(), name.clone()))
                    .or_else(through_glob)
                {
                    target = t.clone();
                }
            }
            // Using what an ancestor (or the module itself) defines is not an edge.
            if module.starts_with(&target) {
                continue;
            }
            let shown = match p.segs.split_last() {
                Some((last, init)) if last == "self" => init.join("::"),
                _ => p.segs.join("::"),
            };
            edges.entry(target).or_insert(shown);
        }
    }
    graph
}

/// The cycles of `graph`, one per strongly connected component, each as a closed path.
fn cycles(graph: &BTreeMap<ModPath, BTreeMap<ModPath, String>>) -> Vec<Vec<ModPath>> {
    let mut found: Vec<Vec<ModPath>> = Vec::new();
    let mut covered: std::collections::BTreeSet<ModPath> = std::collections::BTreeSet::new();
    for start in graph.keys() {
        if covered.contains(start) {
            continue;
        }
        // Breadth-first from `start` back to `start`: the shortest cycle through it.
        let mut prev: BTreeMap<ModPath, ModPath> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        let mut closed = None;
        while let Some(m) = queue.pop_front() {
            for next in graph.get(&m).into_iter().flat_map(|e| e.keys()) {
                if next == start {
                    closed = Some(m.clone());
                    break;
                }
                if !prev.contains_key(next) {
                    prev.insert(next.clone(), m.clone());
                    queue.push_back(next.clone());
                }
            }
            if closed.is_some() {
                break;
            }
        }
        if let Some(mut m) = closed {
            let mut path = vec![start.clone()];
            while m != *start {
                path.push(m.clone());
                m = prev[&m].clone();
            }
            path.push(start.clone());
            let last = path.len() - 1;
            path[1..last].reverse();
            covered.extend(path.iter().cloned());
            found.push(path);
        }
    }
    found
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".to_string()
    } else {
        m.join("::")
    }
}

fn crate_sources(src: &Path) -> Vec<(ModPath, String)> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files
        .into_iter()
        // `src/bin/*.rs` are crates of their own.
        .filter(|p| !p.strip_prefix(src).is_ok_and(|r| r.starts_with("bin")))
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (module_of(p.strip_prefix(src).expect("under src")), text)
        })
        .collect()
}

#[test]
fn modules_inside_a_crate_form_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = Vec::new();
    for (dir, _) in ALLOWED {
        let graph = module_graph(&crate_sources(&root.join(dir).join("src")));
        for cycle in cycles(&graph) {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} uses `{}`", show(&w[0]), graph[&w[0]][&w[1]]))
                .collect();
            report.push(format!("{dir}: {}", steps.join(" → ")));
        }
    }
    assert!(
        report.is_empty(),
        "module cycles (move the piece both sides need into the lower module):\n{}",
        report.join("\n")
    );
}

#[test]
fn the_cycle_checker_sees_crate_super_and_child_paths() {
    let m = |s: &str| -> ModPath {
        s.split("::")
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    };
    let files = vec![
        (
            m(""),
            "mod a; mod b; pub use a::Thing; fn f() { b::g(); }".to_string(),
        ),
        (
            m("a"),
            "use crate::{b::{self, G}, Thing}; // crate::c::X in a comment\n".to_string(),
        ),
        (
            m("b"),
            "pub(crate) fn g() { let _ = \"crate::a::x\"; super::Thing::new(); }".to_string(),
        ),
        (m("c"), "use super::b; use crate::c::d::Y;".to_string()),
        (
            m("c::d"),
            "use super::super::a::Z;\n#[cfg(test)]\nmod tests { use crate::c::X; fn f() { let _ = '{'; } }".to_string(),
        ),
    ];
    let graph = module_graph(&files);
    let edges = |s: &str| graph[&m(s)].keys().map(show).collect::<Vec<_>>();
    assert_eq!(edges(""), ["a", "b"]);
    assert_eq!(edges("a"), ["b"]);
    // `super::Thing` is re-exported from `a`: b → a, a cycle with a → b.
    assert_eq!(edges("b"), ["a"]);
    assert_eq!(edges("c"), ["b", "c::d"]);
    assert_eq!(edges("c::d"), ["a"]);
    let found = cycles(&graph);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].iter().map(show).collect::<Vec<_>>(),
        ["a", "b", "a"]
    );
}

/// One synthetic crate per way of naming a module: each has one cycle, `a` ↔ `b`, that the
/// checker must find.
#[test]
fn the_cycle_checker_finds_a_cycle_in_every_path_form() {
    let m = |s: &str| -> ModPath {
        s.split("::")
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    };
    let crate_of = |a: &str, b: &str| {
        vec![
            (m(""), "mod a; mod b;".to_string()),
            (m("a"), a.to_string()),
            (m("b"), b.to_string()),
        ]
    };
    let forms = [
        (
            "crate:: paths in code",
            crate_of(
                "pub fn f() -> crate::b::Y { crate::b::Y::new() }",
                "pub struct Y; impl Y { pub fn new() -> Self { crate::a::f(); Y } }",
            ),
        ),
        (
            "crate:: in a type position",
            crate_of(
                "pub struct X(pub Vec<crate::b::Y>);",
                "pub struct Y; fn g(_: &crate::a::X) {}",
            ),
        ),
        (
            "super:: paths",
            crate_of("fn f() { super::b::g() }", "pub fn g() { super::a::f() }"),
        ),
        (
            "use groups",
            crate_of("use crate::{b::{self, Y}};", "use crate::{a::{X as Z}, c};"),
        ),
        (
            "use super:: groups",
            crate_of("use super::{b::Y};", "use super::{a::{self}};"),
        ),
        ("a glob", crate_of("use crate::b::*;", "use super::a::*;")),
        (
            "a module named through a glob import of its parent",
            crate_of(
                "use super::*;\nfn f() { b::g() }",
                "use crate::*;\npub fn g() { a::f() }",
            ),
        ),
        (
            "a module named through a renamed import",
            crate_of(
                "use super::b as other;\nfn f() { other::g() }",
                "use crate::a as first; fn g() { first::f() }",
            ),
        ),
    ];
    for (form, files) in forms {
        let found = cycles(&module_graph(&files));
        assert_eq!(
            found
                .iter()
                .map(|c| c.iter().map(show).collect::<Vec<_>>())
                .collect::<Vec<_>>(),
            [["a", "b", "a"]],
            "{form}"
        );
    }
    // Items re-exported by the crate root, renamed or by a glob, are their module's.
    let files = vec![
        (
            m(""),
            "mod a; mod b; pub use a::Thing as Renamed; pub(crate) use b::*;".to_string(),
        ),
        (
            m("a"),
            "pub struct Thing; fn f() { crate::Other::new(); }".to_string(),
        ),
        (
            m("b"),
            "pub struct Other; fn g(_: super::Renamed) {}".to_string(),
        ),
    ];
    let found = cycles(&module_graph(&files));
    assert_eq!(found.len(), 1, "re-exports {found:?}");
    // `self::` names a child: `p` → `p::x` → `q` → `p`.
    let files = vec![
        (m(""), "mod p; mod q;".to_string()),
        (m("p"), "mod x; fn f() { self::x::g() }".to_string()),
        (m("p::x"), "pub fn g() { crate::q::h() }".to_string()),
        (m("q"), "pub fn h() { crate::p::f() }".to_string()),
    ];
    let found = cycles(&module_graph(&files));
    assert_eq!(found.len(), 1, "self:: {found:?}");
}

/// docs/architecture.md's one module layout: `foo.rs` beside `foo/`, never `foo/mod.rs`, in a
/// crate's sources and its tests alike.
#[test]
fn no_module_is_a_mod_rs() {
    fn walk(dir: &Path, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.file_name().is_some_and(|n| n == "mod.rs") {
                found.push(path.display().to_string());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    for dir in ALLOWED.iter().map(|(d, _)| *d).chain(["xtask"]) {
        for sub in ["src", "tests", "examples", "benches"] {
            walk(&root.join(dir).join(sub), &mut found);
        }
    }
    walk(&root.join("benches"), &mut found);
    assert!(
        found.is_empty(),
        "`mod.rs` files (write `foo.rs` beside `foo/` instead): {found:?}"
    );
}
