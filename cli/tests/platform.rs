//! Issue 17: `kiln setup emulators` registers QEMU with binfmt_misc, linux/arm64 `RUN` steps
//! and `kiln run` of an arm64 image go through it, the BuildKit platform build args, the errors
//! for a platform kiln cannot build or run, and multi-platform builds (`--platform
//! linux/amd64,linux/arm64`: one solve, an image index, shared cross-compiling stages). The
//! base is Debian's arm64 busybox-static (`cargo xtask setup`). They need root, as CI runs them,
//! and an amd64 host.

mod common;

use common::*;
use std::sync::OnceLock;

/// Whether this host is the amd64 one these tests are written for; says so when it is not.
fn amd64_host() -> bool {
    let amd64 = cfg!(target_arch = "x86_64");
    if !amd64 {
        println!("skipped: these tests emulate arm64 on an amd64 host");
    }
    amd64
}

/// `kiln setup emulators`, once per test binary: the handlers are the host's, shared by every
/// test, and registering them twice at once would race.
fn emulators_registered() -> &'static str {
    static OUTPUT: OnceLock<String> = OnceLock::new();
    OUTPUT.get_or_init(|| {
        let out = Kiln::new().run(&["setup", "emulators"]);
        assert_ok(&out, "kiln setup emulators");
        stdout(&out)
    })
}

/// A store with the host's busybox as `busybox` and the arm64 one as `busybox-arm64`.
fn two_busyboxes() -> Kiln {
    let k = Kiln::with_busybox();
    k.import_arm64_busybox("busybox-arm64");
    k
}

fn run_out(k: &Kiln, args: &[&str]) -> String {
    let out = k.run(args);
    assert_ok(&out, &format!("kiln {}", args.join(" ")));
    stdout(&out)
}

#[test]
fn setup_emulators_registers_qemu_with_fix_binary_and_again_changes_nothing() {
    if !amd64_host() {
        return;
    }
    let first = emulators_registered();
    assert!(
        first.contains("qemu-aarch64: ")
            && first.contains("emulators in `/proc/sys/fs/binfmt_misc`"),
        "{first}"
    );
    let entry = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap();
    assert!(entry.lines().any(|l| l == "enabled"), "{entry}");
    let flags = entry
        .lines()
        .find_map(|l| l.strip_prefix("flags: "))
        .unwrap_or_default();
    assert!(flags.contains('F'), "no fix-binary flag: {entry}");
    // The host's own programs are never handed to QEMU.
    assert!(
        !first.contains("qemu-x86_64:") && !first.contains("qemu-i386:"),
        "{first}"
    );

    let again = run_out(&Kiln::new(), &["setup", "emulators"]);
    assert!(
        again.contains("qemu-aarch64: already registered, interpreter `"),
        "{again}"
    );
    assert!(again.contains("(0 newly registered)"), "{again}");
    assert!(!again.contains(": registered"), "{again}");
}

#[test]
fn arm64_run_steps_and_kiln_run_go_through_the_emulator() {
    if !amd64_host() {
        return;
    }
    emulators_registered();
    let k = two_busyboxes();
    let ctx = temp_context(
        "kiln-ctx-",
        &[("Dockerfile", "FROM busybox-arm64\nRUN uname -m > /arch\n")],
    );
    let out = build(&k, ctx.path(), &["--platform", "linux/arm64", "-t", "arch"]);
    assert_ok(&out, "kiln build --platform linux/arm64");

    assert_eq!(
        run_out(&k, &["run", "--rm", "arch", "cat", "/arch"]),
        "aarch64\n"
    );
    for runtime in runtimes() {
        assert_eq!(
            run_out(
                &k,
                &["run", "--rm", "--runtime", runtime, "arch", "uname", "-m"]
            ),
            "aarch64\n",
            "under {runtime}"
        );
    }
    assert_eq!(
        run_out(
            &k,
            &[
                "run",
                "--rm",
                "--platform",
                "linux/arm64",
                "arch",
                "uname",
                "-m"
            ]
        ),
        "aarch64\n"
    );
    // Detached too: the monitor runs the foreign container, `kiln exec` enters it.
    let id = run_out(
        &k,
        &[
            "run",
            "-d",
            "--platform",
            "linux/arm64",
            "--name",
            "emulated",
            "busybox-arm64",
            "sh",
            "-c",
            "uname -m; exec sleep 300",
        ],
    );
    assert_eq!(id.trim().len(), 64, "{id}");
    assert_eq!(
        run_out(&k, &["exec", "emulated", "uname", "-m"]),
        "aarch64\n"
    );
    // The command prints as it starts, which under the emulator may follow the exec.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while run_out(&k, &["logs", "emulated"]) != "aarch64\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "no `aarch64` in the logs"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    run_out(&k, &["rm", "-f", "emulated"]);
    let config = tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!(
                "oci:{}/images:docker.io/library/arch:latest",
                k.root.path().display()
            ),
        ],
    );
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        (config["os"].as_str(), config["architecture"].as_str()),
        (Some("linux"), Some("arm64")),
        "{config}"
    );

    // Asked for another platform than the image's, `kiln run` says so instead of running it.
    let out = k.run(&["run", "--rm", "--platform", "linux/amd64", "arch", "true"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("`arch` is an image for linux/arm64, not linux/amd64: drop `--platform`"),
        "{err}"
    );
}

#[test]
fn platform_build_args_in_the_global_scope_and_by_arg_in_a_stage() {
    if !amd64_host() {
        return;
    }
    emulators_registered();
    let k = two_busyboxes();
    let dockerfile = "\
FROM --platform=$BUILDPLATFORM busybox AS tools
ARG TARGETPLATFORM
ARG TARGETARCH
ARG BUILDPLATFORM
RUN uname -m > /ran-on && echo \"$BUILDPLATFORM -> $TARGETPLATFORM ($TARGETARCH)\" > /cross
FROM busybox-${TARGETARCH}
RUN echo \"[$TARGETARCH$BUILDARCH]\" > /undeclared
ARG TARGETPLATFORM
ARG TARGETOS
ARG TARGETARCH
ARG TARGETVARIANT
ARG BUILDPLATFORM
ARG BUILDOS
ARG BUILDARCH
ARG BUILDVARIANT
RUN echo \"$TARGETPLATFORM|$TARGETOS|$TARGETARCH|$TARGETVARIANT|$BUILDPLATFORM|$BUILDOS|$BUILDARCH|$BUILDVARIANT\" > /args && uname -m >> /args
COPY --from=tools /ran-on /cross /
";
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", dockerfile)]);
    let out = build(&k, ctx.path(), &["--platform", "linux/arm64", "-t", "args"]);
    assert_ok(&out, "kiln build --platform linux/arm64");
    let cat = |path: &str| run_out(&k, &["run", "--rm", "args", "cat", path]);
    assert_eq!(
        cat("/args"),
        "linux/arm64|linux|arm64||linux/amd64|linux|amd64|\naarch64\n"
    );
    assert_eq!(cat("/undeclared"), "[]\n");
    // The `$BUILDPLATFORM` stage ran natively and saw the target's args.
    assert_eq!(cat("/ran-on"), "x86_64\n");
    assert_eq!(cat("/cross"), "linux/amd64 -> linux/arm64 (arm64)\n");
}

#[test]
fn missing_emulator_names_the_platform_and_the_commands_that_install_it() {
    if !amd64_host() {
        return;
    }
    let k = two_busyboxes();
    // The host's binfmt_misc is shared by every test: this one sees an empty one instead.
    let no_handlers = tempfile::tempdir().unwrap();
    let kiln = |args: &[&str]| {
        k.cmd()
            .env("KILN_BINFMT_MISC_DIR", no_handlers.path())
            .args(args)
            .output()
            .unwrap()
    };
    let ctx = temp_context(
        "kiln-ctx-",
        &[("Dockerfile", "FROM busybox-arm64\nRUN uname -m > /arch\n")],
    );
    let out = kiln(&[
        "build",
        "--platform",
        "linux/arm64",
        "-t",
        "arch",
        ctx.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "Dockerfile:2: RUN for linux/arm64: this linux/amd64 host cannot run linux/arm64 \
             programs: no emulator for linux/arm64 is registered with binfmt_misc; install QEMU \
             with `apt-get install qemu-user-static`, then register it with `kiln setup \
             emulators` (as root); or build for linux/amd64"
        ),
        "{err}"
    );
    assert!(!err.contains("exec format error"), "{err}");

    let out = kiln(&["run", "--rm", "busybox-arm64", "uname", "-m"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "cannot run `busybox-arm64`, an image for linux/arm64: this linux/amd64 host cannot \
             run linux/arm64 programs: no emulator for linux/arm64 is registered with \
             binfmt_misc; install QEMU with `apt-get install qemu-user-static`, then register it \
             with `kiln setup emulators` (as root)"
        ),
        "{err}"
    );
    assert!(!err.contains("exec format error"), "{err}");
}

#[test]
fn unknown_platforms_are_refused_with_what_to_write() {
    let k = Kiln::with_busybox();
    let ctx = temp_context(
        "kiln-ctx-",
        &[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\nRUN true\n")],
    );
    let out = build(&k, ctx.path(), &["--platform", "linux"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "`kiln build --platform`: invalid platform `linux`: expected `os/arch[/variant]`, \
             e.g. `linux/amd64` or `linux/arm64/v8`"
        ),
        "{err}"
    );
    let out = k.run(&["run", "--rm", "--platform", "linux/", "busybox", "true"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`kiln run --platform`: invalid platform `linux/`"),
        "{}",
        stderr(&out)
    );
    // Well formed, but no architecture kiln can run or emulate.
    let out = build(&k, ctx.path(), &["--platform", "linux/arm65"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "Dockerfile:3: RUN for linux/arm65: this linux/amd64 host cannot run linux/arm65 \
             programs: kiln knows no emulator for the architecture `arm65`"
        ),
        "{err}"
    );
}

#[test]
fn a_base_image_without_the_platform_names_the_one_it_has() {
    let k = two_busyboxes();
    let (reg, _guard) = registry();
    let base = format!("{reg}/{}:latest", unique("arm64only"));
    assert_ok(
        &k.run(&["push", "busybox-arm64", &base]),
        "push busybox-arm64",
    );
    let fresh = Kiln::new();
    let ctx = temp_context(
        "kiln-ctx-",
        &[("Dockerfile", &format!("FROM {base}\nCOPY Dockerfile /\n"))],
    );
    let out = build(&fresh, ctx.path(), &["--platform", "linux/s390x"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "`{base}` is an image for linux/arm64 only, not linux/s390x; build for linux/arm64, \
             or use an image that has a linux/s390x variant"
        )),
        "{err}"
    );
}

/// Pushes an OCI index of `k`'s host busybox and arm64 busybox to the registry `reg` (made as an
/// OCI layout and copied by skopeo, which keeps every digest) and returns its name.
fn push_busybox_index(k: &Kiln, reg: &str) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("layout");
    let mut entries = Vec::new();
    for (name, arch) in [("busybox", "amd64"), ("busybox-arm64", "arm64")] {
        let src = format!(
            "oci:{}/images:docker.io/library/{name}:latest",
            k.root.path().display()
        );
        tool(
            "skopeo",
            &["copy", &src, &format!("oci:{}:{arch}", layout.display())],
        );
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let desc = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == arch)
            .unwrap()
            .clone();
        entries.push(serde_json::json!({
            "mediaType": desc["mediaType"], "digest": desc["digest"], "size": desc["size"],
            "platform": {"os": "linux", "architecture": arch}
        }));
    }
    let multi = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let (digest, size) = put_blob(&layout, multi.to_string().as_bytes());
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": size,
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    std::fs::write(layout.join("index.json"), top.to_string()).unwrap();
    let dest = format!("{reg}/{}:multi", unique("busybox-index"));
    // Digests kept as the layout has them: see `registry.rs`, `push_two_platform_index`.
    tool(
        "skopeo",
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:multi", layout.display()),
            &format!("docker://{dest}"),
        ],
    );
    dest
}

/// The platforms an index names, as `os/arch`, in its order.
fn platforms_of(index_json: &str) -> Vec<String> {
    let index: serde_json::Value = serde_json::from_str(index_json).unwrap();
    index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("not an index: {index_json}"))
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or(""),
                m["platform"]["architecture"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[test]
fn a_tag_keeps_every_platform_pulled_under_it_and_pushes_them_all() {
    if !amd64_host() {
        return;
    }
    emulators_registered();
    let k = two_busyboxes();
    let (reg, _guard) = registry();
    let dest = push_busybox_index(&k, &reg);
    let inspect_remote = |name: &str| {
        tool(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{name}"),
            ],
        )
    };
    let remote = inspect_remote(&dest);
    assert_eq!(platforms_of(&remote), ["linux/amd64", "linux/arm64"]);

    // One platform, then the other: the second pull does not drop the first.
    let fresh = Kiln::new();
    run_out(&fresh, &["pull", "--platform", "linux/arm64", &dest]);
    run_out(&fresh, &["pull", &dest]);
    let stored = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}/images:{dest}", fresh.root.path().display()),
        ],
    );
    assert_eq!(stored, remote, "the store's tag names the registry's index");
    assert_eq!(
        run_out(
            &fresh,
            &[
                "run",
                "--rm",
                "--platform",
                "linux/arm64",
                &dest,
                "uname",
                "-m"
            ]
        ),
        "aarch64\n"
    );
    assert_eq!(
        run_out(&fresh, &["run", "--rm", &dest, "uname", "-m"]),
        "x86_64\n"
    );
    // A build for either platform takes its base from the stored index.
    let ctx = temp_context(
        "kiln-ctx-",
        &[(
            "Dockerfile",
            &format!("FROM {dest}\nRUN uname -m > /arch\n"),
        )],
    );
    for (platform, tag, want) in [
        ("linux/arm64", "from-index-arm64", "aarch64\n"),
        ("linux/amd64", "from-index-amd64", "x86_64\n"),
    ] {
        let out = build(&fresh, ctx.path(), &["--platform", platform, "-t", tag]);
        assert_ok(&out, &format!("build for {platform}"));
        assert_eq!(run_out(&fresh, &["run", "--rm", tag, "cat", "/arch"]), want);
    }

    // Pushed again, the index keeps both platforms.
    let copy = format!("{reg}/{}:copy", unique("busybox-index"));
    run_out(&fresh, &["push", &dest, &copy]);
    assert_eq!(inspect_remote(&copy), remote);

    // A platform the index lacks: the error lists the ones it has.
    let out = fresh.run(&["run", "--rm", "--platform", "linux/s390x", &dest, "true"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "has no image for platform `linux/s390x`; available: linux/amd64, linux/arm64"
        ),
        "{err}"
    );
}

/// A store with the host's busybox as `busybox` and `busybox-amd64`, the arm64 one as
/// `busybox-arm64`: `FROM busybox-$TARGETARCH` picks each platform's base.
fn busyboxes_by_arch() -> Kiln {
    let k = two_busyboxes();
    let rootfs = busybox_rootfs().to_str().unwrap();
    run_out(
        &k,
        &[
            "import",
            "--change",
            "CMD [\"sh\"]",
            rootfs,
            "busybox-amd64",
        ],
    );
    k
}

/// A cross-compiling Dockerfile: the build stage runs on the build platform; its first `RUN`
/// (before `ARG TARGETARCH`) is the same for every target, the second is per target; the final
/// stage's `RUN` runs on each target platform (emulated for arm64).
const CROSS_DOCKERFILE: &str = "FROM --platform=$BUILDPLATFORM busybox AS build\n\
RUN echo \"$((6*7))-fetched on $(uname -m)\" && echo deps > /deps\n\
ARG TARGETARCH\n\
RUN echo \"built on $(uname -m) for $TARGETARCH\" > /tool\n\
FROM busybox-$TARGETARCH\n\
COPY --from=build /deps /tool /\n\
RUN uname -m > /arch\n";

fn both(out: &std::process::Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

#[test]
fn multi_platform_build_pushes_an_index_of_both_platforms_and_each_runs() {
    if !amd64_host() {
        return;
    }
    emulators_registered();
    let k = busyboxes_by_arch();
    let (reg, _guard) = registry();
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", CROSS_DOCKERFILE)]);
    let dest = format!("{reg}/{}:multi", unique("multi-platform"));
    let out = build(
        &k,
        ctx.path(),
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &dest,
            "--push",
        ],
    );
    assert_ok(&out, "kiln build --platform linux/amd64,linux/arm64 --push");
    let remote = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{dest}"),
        ],
    );
    assert_eq!(platforms_of(&remote), ["linux/amd64", "linux/arm64"]);
    assert!(
        remote.contains("\"mediaType\":\"application/vnd.oci.image.index.v1+json\""),
        "{remote}"
    );
    // The store's name is the index too: `kiln images` lists it, `kiln run --platform` picks.
    let stored = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}/images:{dest}", k.root.path().display()),
        ],
    );
    assert_eq!(platforms_of(&stored), ["linux/amd64", "linux/arm64"]);
    assert!(
        run_out(&k, &["images"]).contains(&dest),
        "kiln images lacks {dest}"
    );
    let run = |k: &Kiln, platform: &str, cmd: &[&str]| {
        let mut args = vec!["run", "--rm", "--platform", platform, &dest];
        args.extend_from_slice(cmd);
        run_out(k, &args)
    };
    assert_eq!(run(&k, "linux/arm64", &["uname", "-m"]), "aarch64\n");
    assert_eq!(
        run(&k, "linux/arm64", &["cat", "/arch", "/tool"]),
        "aarch64\nbuilt on x86_64 for arm64\n"
    );
    assert_eq!(
        run(&k, "linux/amd64", &["cat", "/arch", "/tool"]),
        "x86_64\nbuilt on x86_64 for amd64\n"
    );
    // Pulled into another store, the arm64 image runs under emulation.
    let fresh = Kiln::new();
    run_out(&fresh, &["pull", "--all-platforms", &dest]);
    assert_eq!(run(&fresh, "linux/arm64", &["uname", "-m"]), "aarch64\n");

    // `oci-mediatypes=false`: a Docker manifest list of Docker manifests.
    let list = format!("{reg}/{}:list", unique("multi-platform"));
    let out = build(
        &k,
        ctx.path(),
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--output",
            &format!("type=registry,name={list},oci-mediatypes=false"),
        ],
    );
    assert_ok(
        &out,
        "kiln build --output type=registry,oci-mediatypes=false",
    );
    let remote = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{list}"),
        ],
    );
    assert_eq!(platforms_of(&remote), ["linux/amd64", "linux/arm64"]);
    assert!(
        remote.contains("manifest.list.v2+json")
            && remote
                .matches("vnd.docker.distribution.manifest.v2+json")
                .count()
                == 2,
        "{remote}"
    );
}

#[test]
fn cross_compiling_dockerfile_shares_its_build_stage_across_platforms() {
    if !amd64_host() {
        return;
    }
    emulators_registered();
    let k = busyboxes_by_arch();
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", CROSS_DOCKERFILE)]);
    let dest = tempfile::tempdir().unwrap();
    let local = dest.path().join("local");
    let out = build(
        &k,
        ctx.path(),
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--output",
            &format!("type=local,dest={}", local.display()),
        ],
    );
    assert_ok(&out, "kiln build --platform linux/amd64,linux/arm64");
    let log = both(&out);
    // The shared step ran once, natively; the per-target ones are named by their platform.
    assert_eq!(log.matches("42-fetched on x86_64").count(), 1, "{log}");
    assert!(
        log.contains("[linux/arm64 stage-1 3/3] RUN uname -m > /arch"),
        "{log}"
    );
    // Step names as BuildKit's for several platforms: the stage's platform, and the target
    // when the stage's `TARGETARCH` names another one.
    assert!(log.contains("[linux/amd64 build 2/3] RUN echo"), "{log}");
    assert!(
        log.contains("[linux/amd64->arm64 build 3/3] RUN echo \"built on"),
        "{log}"
    );
    assert!(
        log.contains("[linux/amd64 build 3/3] RUN echo \"built on"),
        "{log}"
    );
    // `type=local`: one directory per platform, as BuildKit's platform-split names them.
    let read = |p: &str| std::fs::read_to_string(local.join(p)).unwrap();
    assert_eq!(read("linux_amd64/arch"), "x86_64\n");
    assert_eq!(read("linux_arm64/arch"), "aarch64\n");
    assert_eq!(read("linux_arm64/tool"), "built on x86_64 for arm64\n");
    assert_eq!(read("linux_amd64/deps"), "deps\n");
    for dir in ["linux_amd64", "linux_arm64"] {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(local.join(dir)).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o7777, meta.mtime()),
            (0o755, 0),
            "{dir}: as BuildKit's local exporter makes it"
        );
    }

    // `type=tar`: the same split inside one tar, each platform's top directory 0755 and dated
    // the epoch, as BuildKit's tar exporter writes it.
    let fs_tar = dest.path().join("fs.tar");
    let out = build(
        &k,
        ctx.path(),
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--output",
            &format!("type=tar,dest={}", fs_tar.display()),
        ],
    );
    assert_ok(
        &out,
        "kiln build --platform linux/amd64,linux/arm64 -o type=tar",
    );
    let mut entries = std::collections::BTreeMap::new();
    let mut tops = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&fs_tar).unwrap());
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let h = e.header();
        if !path.trim_end_matches('/').contains('/') {
            tops.push((path.clone(), h.mode().unwrap(), h.mtime().unwrap()));
        }
        let mut body = String::new();
        if h.entry_type().is_file() && (path.ends_with("/arch") || path.ends_with("/tool")) {
            std::io::Read::read_to_string(&mut e, &mut body).unwrap();
            entries.insert(path, body);
        }
    }
    assert_eq!(
        tops,
        [
            ("linux_amd64/".to_string(), 0o755, 0),
            ("linux_arm64/".to_string(), 0o755, 0)
        ]
    );
    assert_eq!(entries["linux_amd64/arch"], "x86_64\n");
    assert_eq!(entries["linux_arm64/arch"], "aarch64\n");
    assert_eq!(entries["linux_arm64/tool"], "built on x86_64 for arm64\n");

    // `type=oci`: a layout whose image is the index of both platforms.
    let archive = dest.path().join("multi.tar");
    let out = build(
        &k,
        ctx.path(),
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--output",
            &format!("type=oci,dest={}", archive.display()),
        ],
    );
    assert_ok(&out, "kiln build --output type=oci");
    assert!(both(&out).contains("(0 steps run, "), "{}", both(&out));
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci-archive:{}", archive.display()),
        ],
    );
    assert_eq!(platforms_of(&raw), ["linux/amd64", "linux/arm64"]);
    let arm = tool(
        "skopeo",
        &[
            "inspect",
            "--override-arch",
            "arm64",
            &format!("oci-archive:{}", archive.display()),
        ],
    );
    assert!(arm.contains("\"Architecture\": \"arm64\""), "{arm}");

    // `--metadata-file` names the index, and no config (an index has one per platform), as
    // BuildKit's; `kiln images` lists the index's platforms.
    let meta = dest.path().join("meta.json");
    let out = build(
        &k,
        ctx.path(),
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "multi:1",
            "--metadata-file",
            meta.to_str().unwrap(),
        ],
    );
    assert_ok(&out, "kiln build -t multi:1 --metadata-file");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    let layout: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(k.root.path().join("images/index.json")).unwrap(),
    )
    .unwrap();
    let index_digest = layout["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"] == "docker.io/library/multi:1"
        })
        .map(|m| m["digest"].clone())
        .unwrap_or_else(|| panic!("no multi:1 in {layout}"));
    assert_eq!(meta["containerimage.digest"], index_digest, "{meta}");
    assert_eq!(
        meta["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert!(meta.get("containerimage.config.digest").is_none(), "{meta}");
    let images = run_out(&k, &["images"]);
    let line = images
        .lines()
        .find(|l| l.starts_with("docker.io/library/multi:1 "))
        .unwrap_or_else(|| panic!("{images}"));
    assert!(line.ends_with(" linux/amd64,linux/arm64"), "{images}");
    assert!(
        images.lines().next().unwrap().ends_with(" PLATFORMS"),
        "{images}"
    );
}

#[test]
fn debug_llb_of_several_platforms_is_the_one_graph_a_build_solves() {
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", CROSS_DOCKERFILE)]);
    let out = Kiln::new().run(&[
        "debug",
        "llb",
        "--platform",
        "linux/amd64,linux/arm64",
        ctx.path().to_str().unwrap(),
    ]);
    assert_ok(&out, "kiln debug llb --platform linux/amd64,linux/arm64");
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<&str> = doc["ops"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    let count = |prefix: &str| names.iter().filter(|n| n.starts_with(prefix)).count();
    // The shared step is one op; the per-target ones name their platform as BuildKit does.
    assert_eq!(count("[linux/amd64 build 2/3] RUN echo"), 1, "{names:?}");
    assert_eq!(
        count("[linux/amd64->arm64 build 3/3] RUN echo"),
        1,
        "{names:?}"
    );
    assert_eq!(count("[linux/amd64 build 3/3] RUN echo"), 1, "{names:?}");
    assert_eq!(
        count("[linux/arm64 stage-1 3/3] RUN uname -m"),
        1,
        "{names:?}"
    );
    let platforms = doc["platforms"].as_array().unwrap();
    let listed: Vec<&str> = platforms
        .iter()
        .map(|p| p["platform"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["linux/amd64", "linux/arm64"]);
    assert_ne!(platforms[0]["root"], platforms[1]["root"]);
    assert_eq!(platforms[1]["image_config"]["architecture"], "arm64");
}

#[test]
fn several_platforms_into_a_single_platform_output_say_what_to_do() {
    if !amd64_host() {
        return;
    }
    let k = busyboxes_by_arch();
    let ctx = temp_context("kiln-ctx-", &[("Dockerfile", CROSS_DOCKERFILE)]);
    let out = build(
        &k,
        ctx.path(),
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--output",
            "type=docker,dest=img.tar",
        ],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(
            "`--output type=docker` holds one platform's image, but this build is for \
             linux/amd64,linux/arm64: build one platform (e.g. `--platform linux/amd64`), or use \
             `type=oci` or `type=registry`, which keep every platform in one image index"
        ),
        "{err}"
    );
    assert!(!err.contains("RUN"), "refused before any step ran: {err}");
}
