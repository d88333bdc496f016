//! `cargo xtask differential`: builds every case of `testdata/differential/` with kiln, reduces
//! the image to a summary (summary.rs) and compares it with the committed summary of BuildKit's
//! image of the same case. When buildkitd answers at `$BUILDKIT_HOST`, BuildKit builds the case
//! too, and its summary is written when missing or with `--bless`. Differences listed in
//! `testdata/differential/KNOWN.md` are reported as known instead of failing the case.

use crate::summary;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The base image: kiln imports the host's busybox-static as `busybox:latest`, as the tests do.
/// For BuildKit, kiln pushes that same image to `$DIFFERENTIAL_REGISTRY` (default the peers'
/// registry, which buildkitd reaches over plain http), so both builders start from one set of
/// bytes and a difference in a layer is the builders' own.
const KILN_BASE: &str = "busybox:latest";
const REGISTRY_DEFAULT: &str = "127.0.0.1:5000";
/// The base's name in the registry, which kiln's store also holds (cases may name it directly,
/// e.g. `COPY --from=`; kiln finds it in its store without the registry).
const REGISTRY_BASE: &str = "kiln-differential/busybox:latest";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct Opts {
    cases: Option<Vec<String>>,
    bless: bool,
    no_buildkit: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        cases: None,
        bless: false,
        no_buildkit: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bless" => o.bless = true,
            "--no-buildkit" => o.no_buildkit = true,
            "--cases" => {
                let v = it.next().context("`--cases` needs a list: `--cases a,b`")?;
                o.cases = Some(v.split(',').map(str::to_string).collect());
            }
            other => {
                bail!("unknown argument `{other}`: use `[--cases a,b] [--bless] [--no-buildkit]`")
            }
        }
    }
    Ok(o)
}

/// One case's build options, from its `options` file: `target=STAGE`, `build-arg=K=V`,
/// `secret=ID=FILE` (FILE in the case's directory).
struct Case {
    name: String,
    dir: PathBuf,
    target: Option<String>,
    build_args: Vec<String>,
    secrets: Vec<String>,
}

impl Case {
    /// `id=ID,src=PATH`, the `--secret` value both builders take.
    fn secret_flags(&self) -> Result<Vec<String>> {
        self.secrets
            .iter()
            .map(|s| {
                let (id, file) = s.split_once('=').with_context(|| {
                    format!("`{}/options`: `secret={s}` needs `ID=FILE`", self.name)
                })?;
                Ok(format!("id={id},src={}", self.dir.join(file).display()))
            })
            .collect()
    }
}

fn load_cases(corpus: &Path, only: &Option<Vec<String>>) -> Result<Vec<Case>> {
    let mut names: Vec<String> = std::fs::read_dir(corpus)
        .with_context(|| format!("cannot read `{}`", corpus.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Dockerfile").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if let Some(only) = only {
        for n in only {
            if !names.contains(n) {
                bail!("no case `{n}` in `{}`", corpus.display());
            }
        }
        names.retain(|n| only.contains(n));
    }
    let mut cases = Vec::new();
    for name in names {
        let dir = corpus.join(&name);
        let mut case = Case {
            name,
            dir: dir.clone(),
            target: None,
            build_args: Vec::new(),
            secrets: Vec::new(),
        };
        if let Ok(text) = std::fs::read_to_string(dir.join("options")) {
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                if let Some(t) = line.strip_prefix("target=") {
                    case.target = Some(t.to_string());
                } else if let Some(a) = line.strip_prefix("build-arg=") {
                    case.build_args.push(a.to_string());
                } else if let Some(a) = line.strip_prefix("secret=") {
                    case.secrets.push(a.to_string());
                } else {
                    bail!("`{}/options`: unknown line `{line}`", case.name);
                }
            }
        }
        cases.push(case);
    }
    Ok(cases)
}

/// A known difference: the case (or `*`), a text the difference line contains, and its kind
/// (`BuildKit v0.11 noise`, `kiln gap`, ...).
struct Known {
    case: String,
    text: String,
    kind: String,
}

/// KNOWN.md's table rows: `| case | `difference` | kind | reason |`.
fn load_known(corpus: &Path) -> Vec<Known> {
    let text = std::fs::read_to_string(corpus.join("KNOWN.md")).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let (case, diff) = (cells.first()?, cells.get(1)?);
            if cells.len() < 4 || case.starts_with('-') || *case == "case" {
                return None;
            }
            Some(Known {
                case: case.trim_matches('`').to_string(),
                text: diff.trim_matches('`').to_string(),
                kind: cells[2].to_string(),
            })
        })
        .collect()
}

/// The context of a case: its `context/` directory, or an empty one.
fn context_dir(case: &Case, work: &Path) -> Result<PathBuf> {
    let c = case.dir.join("context");
    if c.is_dir() {
        return Ok(c);
    }
    let empty = work.join("empty-context");
    std::fs::create_dir_all(&empty)?;
    Ok(empty)
}

/// What a builder made of a case: the summary, or the fact that the build failed.
fn outcome(built: Result<PathBuf>, base: &[String]) -> Result<String> {
    match built {
        Err(e) => Ok(format!("build fails\n# {}\n", last_line(&format!("{e:#}")))),
        Ok(archive) => {
            let image = summary::read_archive(&archive)?;
            let diff_ids: Vec<String> = image.config["rootfs"]["diff_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let n = diff_ids
                .iter()
                .zip(base)
                .take_while(|(a, b)| a == b)
                .count();
            summary::summarise(&image, n)
        }
    }
}

/// The error's last line, with BuildKit's per-run ref ids (`abc::def`) scrubbed so that a
/// re-blessed summary does not churn.
fn last_line(s: &str) -> String {
    let line: String = s
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect();
    line.split(' ')
        .map(|w| if w.contains("::") { "<ref>:" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Kiln {
    bin: PathBuf,
    root: PathBuf,
}

impl Kiln {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("KILN_ROOT", &self.root)
            .env("KILN_PROGRESS", "plain")
            .stdin(Stdio::null());
        c
    }

    fn build(&self, case: &Case, work: &Path) -> Result<PathBuf> {
        let dest = work.join(format!("{}.kiln.tar", case.name));
        let _ = std::fs::remove_file(&dest);
        let mut c = self.cmd();
        c.arg("build")
            .arg("-f")
            .arg(case.dir.join("Dockerfile"))
            .arg("--build-arg")
            .arg(format!("BASE={KILN_BASE}"))
            .arg("-o")
            .arg(format!("type=oci,dest={}", dest.display()));
        for a in &case.build_args {
            c.arg("--build-arg").arg(a);
        }
        for s in case.secret_flags()? {
            c.arg("--secret").arg(s);
        }
        if let Some(t) = &case.target {
            c.arg("--target").arg(t);
        }
        c.arg(context_dir(case, work)?);
        capture(&mut c, &work.join(format!("{}.kiln.log", case.name)))?;
        Ok(dest)
    }
}

struct BuildKit {
    buildctl: PathBuf,
    base: String,
}

impl BuildKit {
    fn build(
        &self,
        case: &Case,
        work: &Path,
        name: &str,
        dockerfile_dir: &Path,
    ) -> Result<PathBuf> {
        let dest = work.join(format!("{name}.buildkit.tar"));
        let _ = std::fs::remove_file(&dest);
        let mut c = Command::new(&self.buildctl);
        c.args([
            "build",
            "--frontend",
            "dockerfile.v0",
            "--progress",
            "plain",
            "--no-cache",
        ])
        .arg("--local")
        .arg(format!("context={}", context_dir(case, work)?.display()))
        .arg("--local")
        .arg(format!("dockerfile={}", dockerfile_dir.display()))
        .arg("--opt")
        .arg(format!("build-arg:BASE={}", self.base))
        .arg("--output")
        .arg(format!("type=oci,dest={}", dest.display()))
        .stdin(Stdio::null());
        for a in &case.build_args {
            c.arg("--opt").arg(format!("build-arg:{a}"));
        }
        for s in case.secret_flags()? {
            c.arg("--secret").arg(s);
        }
        if let Some(t) = &case.target {
            c.arg("--opt").arg(format!("target={t}"));
        }
        capture(&mut c, &work.join(format!("{name}.buildkit.log")))?;
        Ok(dest)
    }
}

/// Runs a build with its output in `log`; a failure carries the log's last line.
fn capture(c: &mut Command, log: &Path) -> Result<()> {
    let out = c
        .output()
        .with_context(|| format!("cannot start `{c:?}`"))?;
    let mut text = out.stdout.clone();
    text.extend_from_slice(&out.stderr);
    std::fs::write(log, &text)?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim_end());
    }
    Ok(())
}

fn buildkit_answers(buildctl: &Path) -> bool {
    Command::new(buildctl)
        .args(["debug", "workers"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The kiln binary: `$KILN`, else the workspace's debug build.
fn kiln_bin(root: &Path) -> Result<PathBuf> {
    if let Some(k) = std::env::var_os("KILN") {
        return Ok(PathBuf::from(k));
    }
    let bin = crate::target_dir(root).join("debug/kiln");
    if !bin.is_file() {
        bail!(
            "no kiln binary at `{}`: run `cargo build -p kiln` or set `KILN`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Lines of `want` not in `got` (`-`) and of `got` not in `want` (`+`), comments left out.
fn diff(want: &str, got: &str) -> Vec<String> {
    // Each entry line carries its section (`layer 1`, `flattened`), so a difference says where.
    let keep = |s: &str| -> Vec<String> {
        let mut section = String::new();
        let mut out = Vec::new();
        for l in s.lines().filter(|l| !l.starts_with('#')) {
            if let Some(entry) = l.strip_prefix("  ") {
                out.push(format!("{section}: {entry}"));
            } else {
                if l.starts_with("layer ") || l == "flattened" {
                    section = l.to_string();
                }
                out.push(l.to_string());
            }
        }
        out
    };
    let (w, g) = (keep(want), keep(got));
    let mut out = Vec::new();
    let mut g_left = g.clone();
    for l in &w {
        if let Some(i) = g_left.iter().position(|x| x == l) {
            g_left.remove(i);
        } else {
            out.push(format!("- {l}"));
        }
    }
    let mut w_left = w.clone();
    for l in &g {
        if let Some(i) = w_left.iter().position(|x| x == l) {
            w_left.remove(i);
        } else {
            out.push(format!("+ {l}"));
        }
    }
    out
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    let corpus = root.join("testdata/differential");
    let cases = load_cases(&corpus, &opts.cases)?;
    let known = load_known(&corpus);
    let strict = std::env::var_os("KILN_CONFORMANCE").is_some();
    // Scratch space (archives, logs, kiln's store); the test gives each run its own.
    let work = std::env::var_os("DIFFERENTIAL_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::target_dir(root).join("differential"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    // kiln's store, with busybox imported as the tests import it.
    let kiln = Kiln {
        bin: kiln_bin(root)?,
        root: work.join("store"),
    };
    let rootfs = work.join("busybox-rootfs");
    crate::run(
        Command::new("sh")
            .arg(root.join("testdata/make-busybox-rootfs.sh"))
            .arg(&rootfs),
    )?;
    let mut import = kiln.cmd();
    import.args(["import", "--change", "CMD [\"sh\"]", "--change"]);
    import
        .arg(format!("ENV {PATH_ENV}"))
        .arg(&rootfs)
        .arg(KILN_BASE);
    capture(&mut import, &work.join("import.log")).context("kiln import of busybox failed")?;
    let registry =
        std::env::var("DIFFERENTIAL_REGISTRY").unwrap_or_else(|_| REGISTRY_DEFAULT.into());
    let registry_base = format!("{registry}/{REGISTRY_BASE}");
    let mut import = kiln.cmd();
    import.args(["import", "--change", "CMD [\"sh\"]", "--change"]);
    import
        .arg(format!("ENV {PATH_ENV}"))
        .arg(&rootfs)
        .arg(&registry_base);
    capture(&mut import, &work.join("import.log")).context("kiln import of busybox failed")?;

    let probe_dir = work.join("probe");
    std::fs::create_dir_all(&probe_dir)?;
    std::fs::write(
        probe_dir.join("Dockerfile"),
        "ARG BASE=busybox\nFROM $BASE\n",
    )?;
    let probe = Case {
        name: "base-probe".into(),
        dir: probe_dir.clone(),
        target: None,
        build_args: vec![],
        secrets: vec![],
    };
    let base_ids = |archive: PathBuf| -> Result<Vec<String>> {
        let image = summary::read_archive(&archive)?;
        Ok(image.config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    };
    let kiln_base = base_ids(
        kiln.build(&probe, &work)
            .context("kiln cannot build `FROM busybox`")?,
    )?;

    let buildkit = if opts.no_buildkit {
        None
    } else {
        let buildctl =
            PathBuf::from(std::env::var_os("BUILDCTL").unwrap_or_else(|| "buildctl".into()));
        match buildctl {
            b if std::env::var_os("BUILDKIT_HOST").is_some() && buildkit_answers(&b) => {
                let base = registry_base.clone();
                let mut push = kiln.cmd();
                push.args(["push", &base]);
                capture(&mut push, &work.join("push.log"))
                    .with_context(|| format!("kiln cannot push the base image to `{base}`"))?;
                let bk = BuildKit { buildctl: b, base };
                let ids = base_ids(bk.build(&probe, &work, "base-probe", &probe_dir)?)?;
                if ids != kiln_base {
                    bail!("BuildKit's base image has other layers than kiln's ({ids:?} vs {kiln_base:?})");
                }
                println!(
                    "differential: BuildKit answers at {}",
                    std::env::var("BUILDKIT_HOST").unwrap_or_default()
                );
                Some((bk, ids))
            }
            _ => {
                println!("differential: no BuildKit (set BUILDCTL and BUILDKIT_HOST); comparing with the committed summaries");
                None
            }
        }
    };

    let (mut passed, mut failed) = (0usize, 0usize);
    for case in &cases {
        let summary_path = case.dir.join("buildkit.summary");
        if let Some((bk, ids)) = &buildkit {
            let fresh = outcome(bk.build(case, &work, &case.name, &case.dir), ids)?;
            let fresh = format!(
                "# BuildKit v0.11.6 summary of `{}` (cargo xtask differential --bless)\n{fresh}",
                case.name
            );
            match std::fs::read_to_string(&summary_path) {
                Ok(old) if !opts.bless => {
                    if diff(&old, &fresh).iter().any(|_| true) {
                        println!("{}: BuildKit now gives a different summary than the committed one (use --bless to rewrite it)", case.name);
                    }
                }
                _ => std::fs::write(&summary_path, &fresh)?,
            }
        }
        let want = match std::fs::read_to_string(&summary_path) {
            Ok(w) => w,
            Err(_) => {
                if strict {
                    println!(
                        "FAIL {}: no `buildkit.summary` (KILN_CONFORMANCE is set)",
                        case.name
                    );
                    failed += 1;
                } else {
                    println!(
                        "skip {}: no `buildkit.summary`; run with BuildKit to make it",
                        case.name
                    );
                }
                continue;
            }
        };
        let got = outcome(kiln.build(case, &work), &kiln_base)?;
        std::fs::write(work.join(format!("{}.kiln.summary", case.name)), &got)?;
        let mut unexplained = Vec::new();
        let rows: Vec<&Known> = known
            .iter()
            .filter(|k| k.case == case.name || k.case == "*")
            .collect();
        let mut used = vec![false; rows.len()];
        for d in diff(&want, &got) {
            match rows.iter().position(|k| d.contains(&k.text)) {
                Some(i) => {
                    used[i] = true;
                    println!("known {} ({}): {d}", case.name, rows[i].kind);
                }
                None => unexplained.push(d),
            }
        }
        for (k, used) in rows.iter().zip(used) {
            if !used && k.case != "*" {
                println!(
                    "stale {}: KNOWN.md lists `{}`, which no longer differs: remove the row",
                    case.name, k.text
                );
            }
        }
        if unexplained.is_empty() {
            println!("ok {}", case.name);
            passed += 1;
        } else {
            println!("FAIL {}", case.name);
            for d in &unexplained {
                println!("  {d}");
            }
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_their_section() {
        let want = "layers 1 (base 1)\nlayer 0\n  a file\n  b dir\nflattened\n  a file\n";
        let got = "# comment\nlayers 1 (base 1)\nlayer 0\n  a file\nflattened\n  a file\n  c dir\n";
        assert_eq!(
            diff(want, got),
            vec!["- layer 0: b dir", "+ flattened: c dir"]
        );
    }

    #[test]
    fn known_rows_come_from_the_tables_only() {
        let dir = std::env::temp_dir().join(format!("xtask-known-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("KNOWN.md"),
            "text | not a row\n| case | difference | kind | reason |\n|---|---|---|---|\n| c1 | `x y` | noise | why |\n",
        )
        .unwrap();
        let rows = load_known(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].case.as_str(),
                rows[0].text.as_str(),
                rows[0].kind.as_str()
            ),
            ("c1", "x y", "noise")
        );
    }
}
