//! `kiln build --cache-to` / `--cache-from` against the real registry and OCI layout
//! directories: a second "CI machine" (another store, another checkout path, other mtimes) hits
//! every step of the first's build; broken caches are warnings, failed exports are errors.

mod common;

use common::*;
use std::path::Path;

const DOCKERFILE: &str = "FROM BASE AS build
COPY src /src
RUN cat /src/a.txt > /out && echo ran-build-$((40+2))
FROM BASE
COPY --from=build /out /out
COPY b.txt /b.txt
RUN echo ran-final-$((40+2)) | tee /final
";

/// A context for `DOCKERFILE` on `base`, in a new directory named from `prefix`, its files
/// touched to `mtime` (seconds since the epoch).
fn context(prefix: &str, base: &str, mtime: &str) -> tempfile::TempDir {
    let dir = temp_context(
        prefix,
        &[
            ("Dockerfile", &DOCKERFILE.replace("BASE", base)),
            ("src/a.txt", "hello from a\n"),
            ("b.txt", "bee\n"),
        ],
    );
    for f in ["Dockerfile", "src/a.txt", "b.txt", "src"] {
        let out = std::process::Command::new("touch")
            .args(["-d", mtime, dir.path().join(f).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    dir
}

/// Pushes the test busybox to the registry, so that two stores resolve `FROM` to one image.
fn push_base(reg: &str) -> String {
    let k = Kiln::with_busybox();
    let base = format!("{reg}/{}:1", unique("cache-base"));
    assert_ok(&k.run(&["push", "busybox", &base]), "push the base image");
    base
}

fn count(text: &str, what: &str) -> usize {
    text.lines().filter(|l| l.contains(what)).count()
}

/// The `(N steps run, M cached)` figures of a build's summary.
fn run_and_cached(out: &std::process::Output) -> (usize, usize) {
    let err = stderr(out);
    let summary = err
        .lines()
        .find(|l| l.starts_with("built "))
        .unwrap_or_else(|| panic!("no summary:\n{err}"));
    let nums: Vec<usize> = summary
        .split(['(', ' ', ','])
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

fn iidfile(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("iid")).unwrap()
}

#[test]
fn a_second_ci_machine_hits_every_step_from_a_registry_cache() {
    let (reg, _guard) = registry();
    let base = push_base(&reg);
    let cache = format!("{reg}/{}:cache", unique("build-cache"));
    let out_dir = tempfile::tempdir().unwrap();

    let first = Kiln::new();
    let ctx1 = context("ci-machine-one-", &base, "2020-01-01 00:00:00");
    let iid1 = out_dir.path().join("one");
    std::fs::create_dir_all(&iid1).unwrap();
    let out = build(
        &first,
        ctx1.path(),
        &[
            "--cache-to",
            &format!("type=registry,ref={cache},mode=max"),
            "--iidfile",
            iid1.join("iid").to_str().unwrap(),
        ],
    );
    assert_ok(&out, "first machine's build with --cache-to");
    assert_eq!(count(&stderr(&out), "ran-build-42"), 1, "{}", stderr(&out));

    // The cache is an OCI manifest other tools read.
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{cache}"),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kiln.cache.config.v1+json"
    );
    assert!(!manifest["layers"].as_array().unwrap().is_empty(), "{raw}");

    let second = Kiln::new();
    let ctx2 = context("ci-machine-two-other-path-", &base, "2024-06-30 12:34:56");
    let iid2 = out_dir.path().join("two");
    std::fs::create_dir_all(&iid2).unwrap();
    let out = build(
        &second,
        ctx2.path(),
        &[
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            "--iidfile",
            iid2.join("iid").to_str().unwrap(),
        ],
    );
    assert_ok(&out, "second machine's build with --cache-from");
    let err = stderr(&out);
    assert!(!err.contains("-42"), "a RUN ran again:\n{err}");
    assert!(!err.contains("warning"), "{err}");
    let (ran, cached) = run_and_cached(&out);
    assert_eq!(ran, 0, "every step is cached:\n{err}");
    assert!(cached >= 6, "{err}");
    assert_eq!(
        iidfile(&iid1),
        iidfile(&iid2),
        "the cached build gives the first machine's image"
    );
}

#[test]
fn a_local_cache_directory_in_min_mode_holds_the_final_stage_only() {
    let (reg, _guard) = registry();
    let base = push_base(&reg);
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");

    let first = Kiln::new();
    let ctx1 = context("local-cache-one-", &base, "2021-01-01 00:00:00");
    let out = build(
        &first,
        ctx1.path(),
        &[
            "--cache-to",
            &format!(
                "type=local,dest={},compression=zstd,compression-level=5",
                cache_dir.display()
            ),
        ],
    );
    assert_ok(&out, "build with --cache-to type=local");
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:latest", cache_dir.display()),
        ],
    );
    assert!(
        raw.contains("application/vnd.kiln.cache.config.v1+json"),
        "{raw}"
    );

    let second = Kiln::new();
    let ctx2 = context("local-cache-two-", &base, "2025-02-02 00:00:00");
    let out = build(
        &second,
        ctx2.path(),
        &[
            "--cache-from",
            &format!("type=local,src={}", cache_dir.display()),
        ],
    );
    assert_ok(&out, "build with --cache-from type=local");
    let err = stderr(&out);
    // mode=min: the final stage's steps are in the cache, the build stage's are not. Keys are
    // looked up before inputs run, so the build stage, needed by no step that runs, does not run.
    assert!(!err.contains("ran-final-42"), "{err}");
    assert!(!err.contains("ran-build-42"), "{err}");
    assert_eq!(run_and_cached(&out), (0, 4), "{err}");
}

#[test]
fn an_unreadable_cache_is_a_warning_naming_it_and_the_build_goes_on_cold() {
    let (reg, _guard) = registry();
    let base = push_base(&reg);
    let k = Kiln::new();
    let ctx = context("bad-cache-", &base, "2022-01-01 00:00:00");
    let missing = format!("{reg}/{}:nope", unique("no-such-cache"));
    let corrupt = tempfile::tempdir().unwrap();
    std::fs::write(corrupt.path().join("index.json"), "{ not json").unwrap();
    // An index that names a 100 GB manifest: refused before anything is read.
    let huge = tempfile::tempdir().unwrap();
    std::fs::write(
        huge.path().join("index.json"),
        format!(
            r#"{{"manifests":[{{"digest":"sha256:{}","size":100000000000,
                "annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#,
            "a".repeat(64)
        ),
    )
    .unwrap();
    let out = build(
        &k,
        ctx.path(),
        &[
            "--cache-from",
            &format!("type=registry,ref={missing}"),
            "--cache-from",
            &format!("type=local,src={}", corrupt.path().display()),
            // An image that is not a cache.
            "--cache-from",
            &base,
            "--cache-from",
            &format!("type=local,src={}", huge.path().display()),
        ],
    );
    assert_ok(&out, "build with unusable caches");
    let err = stderr(&out);
    assert!(err.contains(&format!("build cache `{missing}`")), "{err}");
    assert!(
        err.contains(&format!("build cache `{}`", corrupt.path().display())),
        "{err}"
    );
    assert!(err.contains("not a kiln build cache"), "{err}");
    assert!(err.contains("more than a cache document may be"), "{err}");
    assert_eq!(count(&err, "ran-build-42"), 1, "{err}");
}

#[test]
fn a_failed_export_fails_the_build_unless_ignore_error() {
    let (reg, _guard) = registry();
    let base = push_base(&reg);
    let k = Kiln::new();
    let ctx = context("export-fails-", &base, "2022-01-01 00:00:00");
    // Nothing listens on port 1 of loopback.
    let out = build(
        &k,
        ctx.path(),
        &["--cache-to", "type=registry,ref=127.0.0.1:1/cache:x"],
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot export the build cache to `127.0.0.1:1/cache:x`"),
        "{}",
        stderr(&out)
    );
    let out = build(
        &k,
        ctx.path(),
        &[
            "--cache-to",
            "type=registry,ref=127.0.0.1:1/cache:x,ignore-error=true",
        ],
    );
    assert_ok(&out, "export failure with ignore-error=true");
    assert!(
        stderr(&out).contains("warning: cannot export the build cache to `127.0.0.1:1/cache:x`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn secrets_and_cache_mount_contents_are_never_exported() {
    let (reg, _guard) = registry();
    let base = push_base(&reg);
    let k = Kiln::new();
    let ctx = temp_context(
        "cache-secrets-",
        &[(
            "Dockerfile",
            &format!(
                "FROM {base}\nRUN --mount=type=cache,target=/cache --mount=type=secret,id=tok \
                 printf 'in-the-%s\\n' cache-mount > /cache/m && cp /run/secrets/tok /seen-secret \
                 && rm /seen-secret && printf 'in-the-%s\\n' layer > /d\n"
            ),
        )],
    );
    let secret = ctx.path().join("tok.txt");
    std::fs::write(&secret, "s3cr3t-value").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let out = build(
        &k,
        ctx.path(),
        &[
            "--secret",
            &format!("id=tok,src={}", secret.display()),
            "--cache-to",
            &format!(
                "type=local,dest={},mode=max,compression=uncompressed",
                cache_dir.display()
            ),
        ],
    );
    assert_ok(&out, "build with a secret and a cache mount");
    let mut all = Vec::new();
    for e in std::fs::read_dir(cache_dir.join("blobs/sha256")).unwrap() {
        all.extend(std::fs::read(e.unwrap().path()).unwrap());
    }
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has("in-the-layer"), "the step's own file is in the cache");
    assert!(
        !has("in-the-cache-mount"),
        "a cache mount's file was exported"
    );
    assert!(!has("s3cr3t-value"), "the secret was exported");
}

#[test]
fn several_caches_share_one_local_directory_under_tags() {
    let (reg, _guard) = registry();
    let base = push_base(&reg);
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let first = Kiln::new();
    let ctx_a = context("tag-a-", &base, "2021-01-01 00:00:00");
    let ctx_b = temp_context(
        "tag-b-",
        &[(
            "Dockerfile",
            &format!("FROM {base}\nRUN echo other-$((40+2)) > /o\n"),
        )],
    );
    for (ctx, tag) in [(ctx_a.path(), "a"), (ctx_b.path(), "b")] {
        let out = build(
            &first,
            ctx,
            &[
                "--cache-to",
                &format!("type=local,dest={},tag={tag}", cache_dir.display()),
            ],
        );
        assert_ok(&out, "export under a tag");
    }
    let index = std::fs::read_to_string(cache_dir.join("index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&index).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");

    let second = Kiln::new();
    let out = build(
        &second,
        ctx_b.path(),
        &[
            "--cache-from",
            &format!("type=local,src={},tag=b", cache_dir.display()),
        ],
    );
    assert_ok(&out, "import tag b");
    assert!(!stderr(&out).contains("other-42"), "{}", stderr(&out));
    assert_eq!(run_and_cached(&out).0, 0, "{}", stderr(&out));

    // BuildKit's `digest=` picks a manifest of the directory whatever its tag.
    let b_digest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "b")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let third = Kiln::new();
    let out = build(
        &third,
        ctx_b.path(),
        &[
            "--cache-from",
            &format!("type=local,src={},digest={b_digest}", cache_dir.display()),
        ],
    );
    assert_ok(&out, "import by digest");
    assert!(!stderr(&out).contains("other-42"), "{}", stderr(&out));
    assert_eq!(run_and_cached(&out).0, 0, "{}", stderr(&out));
}

/// Regression: a record whose layer could not be fetched left the snapshots made for it behind,
/// named by nothing.
#[test]
fn an_import_that_fails_half_way_leaves_no_snapshot_behind() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let first = Kiln::new();
    // No image: the keys, and so the order of the records, are the same on every run. The
    // second layer's blob is missing: the two records that need it make the first layer's
    // snapshot, fail, and must remove it; the first COPY's record is still imported.
    let ctx = temp_context(
        "half-import-",
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY a /a\nCOPY b /b\nCOPY c /c\n",
            ),
            ("a", "a"),
            ("b", "b"),
            ("c", "c"),
        ],
    );
    let out = build(
        &first,
        ctx.path(),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", cache_dir.display()),
        ],
    );
    assert_ok(&out, "export");
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:latest", cache_dir.display()),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let second_layer = layers[1]["digest"].as_str().unwrap();
    std::fs::remove_file(cache_dir.join("blobs/sha256").join(&second_layer[7..])).unwrap();

    let snapshots = |k: &Kiln| {
        std::fs::read_dir(k.root.path().join("snapshots"))
            .unwrap()
            .count()
    };
    let cold = Kiln::new();
    assert_ok(&build(&cold, ctx.path(), &[]), "cold build");
    let second = Kiln::new();
    let out = build(
        &second,
        ctx.path(),
        &[
            "--cache-from",
            &format!("type=local,src={}", cache_dir.display()),
        ],
    );
    assert_ok(&out, "build with a cache missing a blob");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "warning: cannot import the build cache `{}`",
            cache_dir.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("2 of its 3 steps could not be imported"),
        "{err}"
    );
    assert_eq!(
        run_and_cached(&out),
        (2, 1),
        "the first COPY comes from the cache:\n{err}"
    );
    assert!(
        snapshots(&second) <= snapshots(&cold),
        "{} snapshots after the failed import, {} after a cold build",
        snapshots(&second),
        snapshots(&cold)
    );
}

/// The registry's garbage collector sees every blob of a cache as referenced: after a GC run the
/// cache still gives every step.
#[test]
fn a_registry_garbage_collection_keeps_every_blob_of_a_cache() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("config.yml");
    let reg = RegistryGuard::start_with(data, "");
    let base = push_base(&reg.addr);
    let cache = format!("{}/{}:cache", reg.addr, unique("gc-cache"));
    let ctx = context("gc-cache-", &base, "2021-01-01 00:00:00");
    let out = build(
        &Kiln::new(),
        ctx.path(),
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    assert_ok(&out, "export");
    let gc = std::process::Command::new("docker-registry")
        .args([
            "garbage-collect",
            "--delete-untagged",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_ok(&gc, "docker-registry garbage-collect");
    // The collector marks what a tagged manifest references: every layer and the config.
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{cache}"),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let marked = format!("{}{}", stdout(&gc), stderr(&gc));
    for l in manifest["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert!(
            marked.contains(&format!("marking blob {d}")),
            "{d} unmarked:\n{marked}"
        );
    }
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    assert!(marked.contains(config_digest), "{marked}");
    let out = build(
        &Kiln::new(),
        ctx.path(),
        &["--cache-from", &format!("type=registry,ref={cache}")],
    );
    assert_ok(&out, "import after GC");
    let err = stderr(&out);
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(run_and_cached(&out).0, 0, "{err}");
}

/// The `N cache layers downloaded` figure of a build's summary.
fn cache_layers_downloaded(out: &std::process::Output) -> usize {
    let err = stderr(out);
    let summary = err
        .lines()
        .find(|l| l.starts_with("built "))
        .unwrap_or_else(|| panic!("no summary:\n{err}"));
    let (head, _) = summary
        .split_once(" cache layers downloaded")
        .unwrap_or_else(|| panic!("no download figure:\n{err}"));
    head.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Import is lazy: a rebuild whose every step hits the cache downloads no layer, its push to the
/// cache's registry mounts them, and its result is the first machine's image; `kiln run` of it
/// then fetches what it needs; a rebuild with one file changed downloads only the layers below
/// the step that runs again.
#[test]
fn a_cached_rebuild_downloads_no_layer_and_a_changed_one_only_what_runs() {
    let (reg, _guard) = registry();
    let base = push_base(&reg);
    let cache = format!("{reg}/{}:cache", unique("lazy-cache"));
    let out_dir = tempfile::tempdir().unwrap();
    let iid = |name: &str| out_dir.path().join(name);

    let first = Kiln::new();
    let ctx1 = context("lazy-one-", &base, "2020-01-01 00:00:00");
    let out = build(
        &first,
        ctx1.path(),
        &[
            "--cache-to",
            &format!("type=registry,ref={cache},mode=max"),
            "--iidfile",
            iid("one").to_str().unwrap(),
        ],
    );
    assert_ok(&out, "first machine's build with --cache-to");
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{cache}"),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let cache_layers = manifest["layers"].as_array().unwrap().len();

    // Another machine pushes the cached result to another repository of the registry, and
    // exports the cache again to a third: both mount the layers, none is downloaded.
    let second = Kiln::new();
    let ctx2 = context("lazy-two-", &base, "2024-06-30 12:34:56");
    let image = format!("{reg}/{}:1", unique("lazy-image"));
    let cache_again = format!("{reg}/{}:cache", unique("lazy-cache-again"));
    let out = build(
        &second,
        ctx2.path(),
        &[
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            "--cache-to",
            &format!("type=registry,ref={cache_again},mode=max"),
            "-t",
            &image,
            "--push",
            "--iidfile",
            iid("two").to_str().unwrap(),
        ],
    );
    assert_ok(&out, "second machine's cached build and push");
    let err = stderr(&out);
    assert_eq!(run_and_cached(&out).0, 0, "every step is cached:\n{err}");
    assert_eq!(
        cache_layers_downloaded(&out),
        0,
        "a cached build with a push and a cache export to the cache's registry downloads no layer:\n{err}"
    );
    let raw_again = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{cache_again}"),
        ],
    );
    let again: serde_json::Value = serde_json::from_str(&raw_again).unwrap();
    // What this solve reached of the cache (the final stage's steps), made of its layers.
    let again = again["layers"].as_array().unwrap();
    let first_layers = manifest["layers"].as_array().unwrap();
    assert!(!again.is_empty(), "{raw_again}");
    assert!(
        again.iter().all(|l| first_layers.contains(l)),
        "{raw_again}"
    );
    let id = std::fs::read_to_string(iid("one")).unwrap();
    assert_eq!(std::fs::read_to_string(iid("two")).unwrap(), id);
    // The registry has the whole image: skopeo reads its config by the layers' digests.
    let pushed = tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ],
    );
    assert!(pushed.contains("\"diff_ids\""), "{pushed}");
    // No `--cache-to type=inline`: no inline cache.
    assert!(
        pushed_config(&image).get("kiln.cache.v1").is_none(),
        "{pushed}"
    );
    let pushed_raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ],
    );
    let pushed_manifest: serde_json::Value = serde_json::from_str(&pushed_raw).unwrap();
    assert_eq!(
        pushed_manifest["config"]["digest"].as_str(),
        Some(id.trim())
    );

    // `kiln save` of the image whose layers are still in the cache's registry fetches them
    // (it failed naming the first missing blob), and the archive runs elsewhere.
    let archive = out_dir.path().join("lazy.tar");
    let saved = second.run(&["save", "-o", archive.to_str().unwrap(), &image]);
    assert_ok(&saved, "kiln save of the lazily imported image");
    let fourth = Kiln::new();
    assert_ok(
        &fourth.run(&["load", "-i", archive.to_str().unwrap()]),
        "kiln load of the saved archive",
    );
    let run = fourth.run(&["run", "--rm", &image, "cat", "/out", "/final"]);
    assert_ok(&run, "kiln run of the loaded image");
    assert_eq!(stdout(&run), "hello from a\nran-final-42\n");

    // The files are fetched when a container needs them.
    let run = second.run(&["run", "--rm", &image, "cat", "/out", "/final"]);
    assert_ok(&run, "kiln run of the lazily imported image");
    assert_eq!(stdout(&run), "hello from a\nran-final-42\n");
    assert_ok(
        &second.run(&["check"]),
        "kiln check of a store with lazy layers",
    );

    // One file of the final stage changed: its COPY and the RUN after it run, on the layers
    // below them; the build stage's own layers stay in the registry.
    let third = Kiln::new();
    let ctx3 = context("lazy-three-", &base, "2024-06-30 12:34:56");
    std::fs::write(ctx3.path().join("b.txt"), "bee changed\n").unwrap();
    let out = build(
        &third,
        ctx3.path(),
        &["--cache-from", &format!("type=registry,ref={cache}")],
    );
    assert_ok(&out, "third machine's build with one file changed");
    let err = stderr(&out);
    assert_eq!(run_and_cached(&out).0, 2, "{err}");
    assert_eq!(count(&err, "ran-final-42"), 1, "{err}");
    let downloaded = cache_layers_downloaded(&out);
    assert!(downloaded > 0, "the steps that ran needed layers:\n{err}");
    assert!(
        downloaded + 2 <= cache_layers,
        "{downloaded} of the cache's {cache_layers} layers downloaded, the build stage's among them:\n{err}"
    );
}

/// `image-manifest=false,oci-mediatypes=false`: the cache is written as BuildKit's default form
/// with Docker media types (a manifest list of the layers and the config), and read back.
#[test]
fn a_cache_written_as_a_docker_manifest_list_is_read_back() {
    let (reg, _guard) = registry();
    let base = push_base(&reg);
    let cache = format!("{reg}/{}:cache", unique("list-cache"));
    let out_dir = tempfile::tempdir().unwrap();
    let iid = |name: &str| out_dir.path().join(name);
    let first = Kiln::new();
    let ctx1 = context("list-one-", &base, "2020-01-01 00:00:00");
    let out = build(
        &first,
        ctx1.path(),
        &[
            "--cache-to",
            &format!(
                "type=registry,ref={cache},mode=max,image-manifest=false,oci-mediatypes=false"
            ),
            "--iidfile",
            iid("one").to_str().unwrap(),
        ],
    );
    assert_ok(&out, "export as a manifest list");
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{cache}"),
        ],
    );
    let list: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        list["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let entries = list["manifests"].as_array().unwrap();
    assert_eq!(
        entries.last().unwrap()["mediaType"],
        "application/vnd.kiln.cache.config.v1+json"
    );
    assert!(
        entries[..entries.len() - 1]
            .iter()
            .all(|e| e["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        "{raw}"
    );

    let second = Kiln::new();
    let ctx2 = context("list-two-", &base, "2024-06-30 12:34:56");
    let out = build(
        &second,
        ctx2.path(),
        &[
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            "--iidfile",
            iid("two").to_str().unwrap(),
        ],
    );
    assert_ok(&out, "import of the manifest list");
    let err = stderr(&out);
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(run_and_cached(&out).0, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(iid("one")).unwrap(),
        std::fs::read_to_string(iid("two")).unwrap()
    );
}

const INLINE_DOCKERFILE: &str = "FROM BASE
COPY a.txt /a.txt
RUN cat /a.txt > /out && echo ran-one-$((40+2))
COPY b.txt /b.txt
RUN cat /b.txt >> /out && echo ran-two-$((40+2))
";

fn inline_context(prefix: &str, base: &str) -> tempfile::TempDir {
    temp_context(
        prefix,
        &[
            ("Dockerfile", &INLINE_DOCKERFILE.replace("BASE", base)),
            ("a.txt", "aye\n"),
            ("b.txt", "bee\n"),
        ],
    )
}

/// The pushed config as it is (without `--raw`, skopeo prints only the fields it knows).
fn pushed_config(image: &str) -> serde_json::Value {
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ],
    );
    serde_json::from_str(&raw).unwrap()
}

/// `--cache-to type=inline`: the records go into the pushed image's config, naming its own
/// layers; another machine's `--cache-from IMAGE` hits every step without downloading a layer
/// and makes the same image, and with one file changed runs only the steps after it.
#[test]
fn an_inline_cache_rides_in_the_image_and_another_machine_hits_it() {
    let (reg, _guard) = registry();
    let base = push_base(&reg);
    let app = format!("{reg}/{}:1", unique("inline-app"));
    let out_dir = tempfile::tempdir().unwrap();
    let iid = |name: &str| out_dir.path().join(name);

    let first = Kiln::new();
    let ctx1 = inline_context("inline-one-", &base);
    let out = build(
        &first,
        ctx1.path(),
        &[
            "--cache-to",
            "type=inline",
            "-t",
            &app,
            "--push",
            "--iidfile",
            iid("one").to_str().unwrap(),
        ],
    );
    assert_ok(&out, "first machine's build with --cache-to type=inline");
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let config = pushed_config(&app);
    let layers = config["rootfs"]["diff_ids"].as_array().unwrap().len();
    let records = config["kiln.cache.v1"]["records"]
        .as_array()
        .unwrap_or_else(|| panic!("no inline cache in the config: {config}"));
    // FROM, two COPYs and two RUNs, each naming a prefix of the image's layers.
    assert!(records.len() >= 4, "{config}");
    let mut longest = 0;
    for r in records {
        let idx: Vec<u64> = r["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap())
            .collect();
        assert_eq!(idx, (0..idx.len() as u64).collect::<Vec<_>>(), "{config}");
        assert!(idx.len() <= layers, "{config}");
        longest = longest.max(idx.len());
    }
    assert_eq!(
        longest, layers,
        "the last step's record is the whole image: {config}"
    );
    let id1 = std::fs::read_to_string(iid("one")).unwrap();

    // Another machine (a fresh store) with the image as its cache: nothing runs, nothing is
    // downloaded, and the same image (its own inline cache included) comes out.
    let second = Kiln::new();
    let ctx2 = inline_context("inline-two-", &base);
    let app2 = format!("{reg}/{}:2", unique("inline-app-again"));
    let out = build(
        &second,
        ctx2.path(),
        &[
            "--cache-from",
            &app,
            "--cache-to",
            "type=inline",
            "-t",
            &app2,
            "--push",
            "--iidfile",
            iid("two").to_str().unwrap(),
        ],
    );
    assert_ok(&out, "second machine's build with --cache-from IMAGE");
    let err = stderr(&out);
    assert!(!err.contains("warning"), "{err}");
    assert!(!err.contains("-42"), "a RUN ran again:\n{err}");
    let (ran, cached) = run_and_cached(&out);
    assert_eq!(ran, 0, "every step is cached:\n{err}");
    assert!(cached >= 4, "{err}");
    assert_eq!(cache_layers_downloaded(&out), 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(iid("two")).unwrap(),
        id1,
        "the first machine's image:\n{config}\nthe second's:\n{}",
        pushed_config(&app2)
    );
    // Its files come from the first machine's image when a container needs them.
    let run = second.run(&["run", "--rm", &app2, "cat", "/out"]);
    assert_ok(&run, "kiln run of the image built from the inline cache");
    assert_eq!(stdout(&run), "aye\nbee\n");

    // One file changed: its COPY and the RUN after it run, the steps below are cached.
    let third = Kiln::new();
    let ctx3 = inline_context("inline-three-", &base);
    std::fs::write(ctx3.path().join("b.txt"), "bee changed\n").unwrap();
    let out = build(
        &third,
        ctx3.path(),
        &["--cache-from", &format!("type=registry,ref={app}")],
    );
    assert_ok(&out, "third machine's build with one file changed");
    let err = stderr(&out);
    assert_eq!(run_and_cached(&out).0, 2, "{err}");
    assert_eq!(count(&err, "ran-one-42"), 0, "{err}");
    assert_eq!(count(&err, "ran-two-42"), 1, "{err}");
}

/// Without `type=inline` an image's config has no inline cache, and `--cache-from` of such an
/// image builds cold with one warning naming it; `type=inline` with no image to carry it, or
/// with `mode=max`, says so.
#[test]
fn an_image_without_an_inline_cache_is_a_warning_and_inline_needs_an_image() {
    let (reg, _guard) = registry();
    let base = push_base(&reg);
    let app = format!("{reg}/{}:1", unique("no-inline-app"));
    let k = Kiln::new();
    let ctx = inline_context("no-inline-", &base);
    let out = build(&k, ctx.path(), &["-t", &app, "--push"]);
    assert_ok(&out, "build and push without an inline cache");
    let config = pushed_config(&app);
    assert!(config.get("kiln.cache.v1").is_none(), "{config}");

    let other = Kiln::new();
    let out = build(&other, ctx.path(), &["--cache-from", &app]);
    assert_ok(
        &out,
        "build with an image without an inline cache as its cache",
    );
    let err = stderr(&out);
    assert_eq!(count(&err, "warning"), 1, "{err}");
    assert_eq!(count(&err, &format!("`{app}`")), 1, "{err}");
    assert!(err.contains("--cache-to type=inline"), "{err}");
    assert_eq!(count(&err, "ran-one-42"), 1, "{err}");

    let out_dir = tempfile::tempdir().unwrap();
    let out = build(
        &other,
        ctx.path(),
        &[
            "--cache-to",
            "type=inline",
            "--output",
            &format!("type=local,dest={}", out_dir.path().display()),
        ],
    );
    assert_ok(&out, "type=inline with a local output");
    assert_eq!(
        count(&stderr(&out), "no cache is written"),
        1,
        "{}",
        stderr(&out)
    );
    let out = build(
        &other,
        ctx.path(),
        &["--cache-to", "type=inline,mode=max", "-t", "inline-max:1"],
    );
    assert_ok(&out, "type=inline,mode=max");
    assert_eq!(
        count(&stderr(&out), "`mode=min` is written"),
        1,
        "{}",
        stderr(&out)
    );
}

/// An OCI layout directory holding an image with an inline cache is a cache too
/// (`type=local,src=DIR,tag=TAG`), read as lazily as a registry's.
#[test]
fn an_inline_cache_is_read_from_an_oci_layout_directory() {
    let (reg, _guard) = registry();
    let base = push_base(&reg);
    let layout = tempfile::tempdir().unwrap();
    let first = Kiln::new();
    let ctx1 = inline_context("inline-layout-one-", &base);
    let out = build(
        &first,
        ctx1.path(),
        &[
            "--cache-to",
            "type=inline",
            "-t",
            "inline-layout:7",
            "--output",
            &format!("type=oci,dest={},tar=false", layout.path().display()),
        ],
    );
    assert_ok(&out, "build into an OCI layout with an inline cache");

    let second = Kiln::new();
    let ctx2 = inline_context("inline-layout-two-", &base);
    let out = build(
        &second,
        ctx2.path(),
        &[
            "--cache-from",
            &format!("type=local,src={},tag=7", layout.path().display()),
        ],
    );
    assert_ok(&out, "build with the layout's image as its cache");
    let err = stderr(&out);
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(run_and_cached(&out).0, 0, "every step is cached:\n{err}");
    assert_eq!(cache_layers_downloaded(&out), 0, "{err}");
}

/// A multi-platform build with `--cache-to type=inline` writes each platform's records into that
/// platform's config; `--cache-from` of the index imports the entries of the platforms built.
#[test]
fn each_platform_of_an_index_carries_its_own_inline_cache() {
    let (reg, _guard) = registry();
    let k = Kiln::with_busybox();
    k.import_arm64_busybox("busybox-arm64");
    let base = format!("{reg}/{}", unique("inline-multi-base"));
    assert_ok(
        &k.run(&["push", "busybox", &format!("{base}-amd64:1")]),
        "push the amd64 base",
    );
    assert_ok(
        &k.run(&["push", "busybox-arm64", &format!("{base}-arm64:1")]),
        "push the arm64 base",
    );
    // No RUN: nothing needs an emulator.
    let dockerfile = format!("FROM {base}-$TARGETARCH:1\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\n");
    let files = [
        ("Dockerfile", dockerfile.as_str()),
        ("a.txt", "aye\n"),
        ("b.txt", "bee\n"),
    ];
    let app = format!("{reg}/{}:multi", unique("inline-multi"));
    let first = Kiln::new();
    let ctx1 = temp_context("inline-multi-one-", &files);
    let platforms = "linux/amd64,linux/arm64";
    let out = build(
        &first,
        ctx1.path(),
        &[
            "--platform",
            platforms,
            "--cache-to",
            "type=inline",
            "-t",
            &app,
            "--push",
        ],
    );
    assert_ok(&out, "multi-platform build with --cache-to type=inline");
    let mut configs = Vec::new();
    for arch in ["amd64", "arm64"] {
        let raw = tool(
            "skopeo",
            &[
                "--override-arch",
                arch,
                "inspect",
                "--config",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{app}"),
            ],
        );
        let config: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(config["architecture"], arch, "{raw}");
        let records = config["kiln.cache.v1"]["records"].as_array().unwrap();
        assert!(records.len() >= 3, "{raw}");
        configs.push(config);
    }
    assert_ne!(
        configs[0]["kiln.cache.v1"], configs[1]["kiln.cache.v1"],
        "each platform's steps have their own keys"
    );

    let second = Kiln::new();
    let ctx2 = temp_context("inline-multi-two-", &files);
    let out = build(
        &second,
        ctx2.path(),
        &["--platform", platforms, "--cache-from", &app],
    );
    assert_ok(&out, "multi-platform build with the index as its cache");
    let err = stderr(&out);
    assert!(!err.contains("warning"), "{err}");
    assert_eq!(run_and_cached(&out).0, 0, "every step is cached:\n{err}");
    assert_eq!(cache_layers_downloaded(&out), 0, "{err}");
}
