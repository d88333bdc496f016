//! End-to-end tests of `kiln build --output`: every output type from one build, checked by
//! independent tools (skopeo, umoci, runc, docker where there is an engine), and reproducible
//! digests with `SOURCE_DATE_EPOCH`.

mod common;

use common::{assert_ok, busybox_rootfs, copy_dir, stderr, Kiln};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

/// A build whose result holds every kind of file a layer must carry.
// The odd files are made in the final stage: copying a fifo with `COPY --from` blocks in the
// solver (it opens the fifo for reading), which is not the exporter's to fix.
const ODD_FILES: &str = r#"FROM busybox:latest AS build
RUN echo built > /artifact
FROM busybox:latest
COPY --from=build /artifact /out/file
RUN mkdir -p /out/dir && ln -s file /out/link \
 && ln /out/file /out/hard && mkfifo /out/fifo && mknod /out/null c 1 3 \
 && echo s > /out/setuid && chmod 4755 /out/setuid && chmod 1777 /out/dir \
 && touch "/out/$(printf 'n%.0s' $(seq 1 150))" && touch "$(printf '/out/caf\351')" \
 && mkdir -p "/out/$(printf 'd%.0s' $(seq 1 90))/$(printf 'e%.0s' $(seq 1 90))" \
 && chown 1234:5678 /out/file
COPY hello.txt /hello.txt
CMD ["cat", "/hello.txt"]
"#;

fn context(dir: &Path, dockerfile: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.join("hello.txt"), "hello from kiln\n").unwrap();
}

fn tool(name: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{name}`: {e}; install it (`cargo xtask setup`)"));
    assert!(
        out.status.success(),
        "`{name} {}` failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn skopeo_inspect(transport: &str) -> serde_json::Value {
    let out = tool("skopeo", &["inspect", "--raw", transport]);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Type, mode, owner, size, content digest / link target / device of every path under `root`.
fn tree(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let what = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                let first = inodes
                    .entry(md.ino())
                    .or_insert_with(|| rel.clone())
                    .clone();
                format!(
                    "file {} {:?} first={}",
                    md.len(),
                    std::fs::read(&p).unwrap(),
                    String::from_utf8_lossy(&first)
                )
            } else if ft.is_fifo() {
                "fifo".into()
            } else if ft.is_char_device() {
                format!("chr {}", md.rdev())
            } else {
                "other".into()
            };
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} {}:{}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid()
                ),
            );
        }
    }
    out
}

#[test]
fn every_output_type_from_one_build_checked_by_skopeo_umoci_and_runc() {
    let k = Kiln::with_busybox();
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    context(&ctx, ODD_FILES);
    let p = |n: &str| t.path().join(n).to_str().unwrap().to_string();
    let out = k.run(&[
        "build",
        "-t",
        "exp:1",
        "--metadata-file",
        &p("meta.json"),
        "--iidfile",
        &p("iid"),
        "-o",
        &format!("type=oci,dest={}", p("oci.tar")),
        "-o",
        &format!("type=oci,dest={},tar=false,name=exp", p("layout")),
        "-o",
        &format!("type=docker,dest={}", p("docker.tar")),
        "-o",
        &format!("type=local,dest={}", p("rootfs")),
        "-o",
        &format!("type=tar,dest={}", p("fs.tar")),
        "-o",
        &format!(
            "type=oci,dest={},compression=zstd,compression-level=3,force-compression=true",
            p("zstd.tar")
        ),
        "-o",
        &format!(
            "type=oci,dest={},compression=uncompressed,force-compression=true,oci-mediatypes=false",
            p("docker-types.tar")
        ),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&out, "build with every output type");

    // --metadata-file and --iidfile agree, as buildx writes them.
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("meta.json")).unwrap()).unwrap();
    // `--iidfile` holds the image ID, the config digest, as `docker build` writes it.
    let iid = std::fs::read_to_string(p("iid")).unwrap();
    assert_eq!(meta["containerimage.config.digest"], iid.as_str());
    assert!(meta["containerimage.digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(
        meta["containerimage.descriptor"]["digest"],
        meta["containerimage.digest"]
    );

    // skopeo reads every image output, and copies each (which checks every digest).
    let oci = skopeo_inspect(&format!("oci-archive:{}", p("oci.tar")));
    assert_eq!(
        oci["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{oci}"
    );
    let layout = skopeo_inspect(&format!("oci:{}:latest", p("layout")));
    assert_eq!(oci, layout);
    let zstd = skopeo_inspect(&format!("oci-archive:{}", p("zstd.tar")));
    for l in zstd["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    let dt = skopeo_inspect(&format!("oci-archive:{}", p("docker-types.tar")));
    assert_eq!(
        dt["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    for l in dt["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar"
        );
    }
    // The same diffIDs whatever the compression.
    let config_of = |transport: &str| -> serde_json::Value {
        let out = tool("skopeo", &["inspect", "--config", transport]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let c1 = config_of(&format!("oci-archive:{}", p("oci.tar")));
    let c2 = config_of(&format!("oci-archive:{}", p("zstd.tar")));
    let c3 = config_of(&format!("docker-archive:{}", p("docker.tar")));
    assert_eq!(c1["rootfs"], c2["rootfs"]);
    assert_eq!(c1["rootfs"], c3["rootfs"]);
    let docker_tags = skopeo_inspect(&format!("docker-archive:{}", p("docker.tar")));
    assert!(docker_tags["layers"].is_array(), "{docker_tags}");
    for (i, src) in [
        format!("oci-archive:{}", p("oci.tar")),
        format!("oci:{}:latest", p("layout")),
        format!("docker-archive:{}", p("docker.tar")),
        format!("oci-archive:{}", p("zstd.tar")),
        format!("oci-archive:{}", p("docker-types.tar")),
    ]
    .iter()
    .enumerate()
    {
        let dest = format!("oci:{}:c{i}", p("copies"));
        tool("skopeo", &["copy", "--quiet", src, &dest]);
    }

    // umoci unpacks the same tree as type=local wrote, odd files included.
    let bundle = t.path().join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:latest", p("layout")),
            bundle.to_str().unwrap(),
        ],
    );
    let local = tree(&t.path().join("rootfs"));
    let unpacked = tree(&bundle.join("rootfs"));
    assert_eq!(local, unpacked);
    let out_dir: BTreeMap<_, _> = local
        .iter()
        .filter(|(k, _)| k.starts_with(b"out"))
        .collect();
    let get = |k: &[u8]| out_dir.get(&k.to_vec()).map(|s| s.as_str()).unwrap_or("");
    assert!(get(b"out/file").contains("1234:5678"), "{out_dir:?}");
    assert!(get(b"out/hard").contains("first=out/file"), "{out_dir:?}");
    assert!(get(b"out/link").starts_with("link file"), "{out_dir:?}");
    assert!(get(b"out/fifo").starts_with("fifo"), "{out_dir:?}");
    assert!(get(b"out/null").starts_with("chr"), "{out_dir:?}");
    assert!(get(b"out/setuid").contains("mode=4755"), "{out_dir:?}");
    assert!(get(b"out/dir").contains("mode=1777"), "{out_dir:?}");
    assert!(get(b"out/caf\xe9").starts_with("file"), "{out_dir:?}");
    assert!(
        get(&[b"out/".to_vec(), b"n".repeat(150)].concat()).starts_with("file"),
        "{out_dir:?}"
    );

    // runc runs the unpacked bundle: the image's CMD prints the file COPY put there.
    let cfg_path = bundle.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["process"]["terminal"] = serde_json::Value::Bool(false);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let id = format!("kiln-export-{}", std::process::id());
    let run = tool("runc", &["run", "--bundle", bundle.to_str().unwrap(), &id]);
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from kiln\n");

    // type=tar holds the same file system.
    let list = tool("tar", &["-tvf", &p("fs.tar")]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("out/hard link to out/file"), "{list}");
    assert!(list.contains("hello.txt"), "{list}");

    // docker load, where an engine answers.
    match docker_host() {
        Some(host) => {
            let docker = |args: &[&str]| {
                let out = Command::new("docker")
                    .env("DOCKER_HOST", &host)
                    .args(args)
                    .output()
                    .unwrap();
                assert_ok(
                    &out,
                    &format!("DOCKER_HOST={host} docker {}", args.join(" ")),
                );
                out
            };
            docker(&["load", "-i", &p("docker.tar")]);
            let run = docker(&["run", "--rm", "--network", "none", "exp:1"]);
            assert_eq!(String::from_utf8_lossy(&run.stdout), "hello from kiln\n");
            docker(&["rmi", "exp:1"]);
        }
        None => eprintln!(
            "docker load skipped: no Docker engine answers `docker info` here (set DOCKER_HOST, \
             or start the peers' engine with ../shared/peers/setup.sh)"
        ),
    }
}

/// A Docker engine to load archives into: `DOCKER_HOST` (or Docker's default socket), else the
/// peers' private engine (`../shared/peers/env.sh`), whichever answers `docker info`.
fn docker_host() -> Option<String> {
    let default =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    [default, "unix:///tmp/dockerd/docker.sock".to_string()]
        .into_iter()
        .find(|host| {
            Command::new("docker")
                .env("DOCKER_HOST", host)
                .arg("info")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
}

#[test]
fn stdout_outputs_and_bad_specs() {
    let k = Kiln::with_busybox();
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    context(&ctx, "FROM busybox:latest\nCOPY hello.txt /\n");
    let out = k.run(&["build", "-o", "type=oci,dest=-", ctx.to_str().unwrap()]);
    assert_ok(&out, "build to stdout");
    let tar = t.path().join("s.tar");
    std::fs::write(&tar, &out.stdout).unwrap();
    skopeo_inspect(&format!("oci-archive:{}", tar.display()));

    let out = k.run(&["build", "-o", "type=tar,dest=-", ctx.to_str().unwrap()]);
    assert_ok(&out, "rootfs tar to stdout");
    std::fs::write(&tar, &out.stdout).unwrap();
    let list = tool("tar", &["-tf", tar.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("hello.txt"));

    let out = k.run(&["build", "-o", "type=floppy,dest=x", ctx.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown `type=floppy`"),
        "{}",
        stderr(&out)
    );
    let out = k.run(&["build", "--push", ctx.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("-t REGISTRY/NAME"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn registry_output_pushes_and_skopeo_reads_it() {
    let (addr, _guard) = common::registry();
    let k = Kiln::with_busybox();
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    context(&ctx, "FROM busybox:latest\nCOPY hello.txt /\n");
    let name = format!("{addr}/{}:zstd", common::unique("export"));
    let out = k.run(&[
        "build",
        "-o",
        &format!("type=registry,name={name},compression=zstd"),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&out, "build --output type=registry");
    let out = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{name}"),
        ],
    );
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let types: Vec<&str> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    // The imported base layer is kept uncompressed in the store, like the new one: both are
    // compressed as the output asks. (A pulled base layer keeps its blob: see the
    // `pulled_base_layer_keeps_its_blob` test in cli/tests/export_lazy.rs.)
    assert_eq!(
        types,
        [
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar+zstd"
        ]
    );
}

/// Same Dockerfile, two stores, two context copies, two moments: one digest.
#[test]
fn source_date_epoch_gives_the_same_digest_from_two_stores() {
    const REPRO: &str = r#"FROM busybox:latest AS build
RUN echo compiled > /artifact && mkdir -p /opt/app && date +%s > /opt/app/built-at-ignored && rm /opt/app/built-at-ignored
FROM busybox:latest
COPY --from=build /artifact /app/artifact
COPY hello.txt /app/
RUN mkdir -p /var/data && echo ready > /var/data/state
ENV APP=1
CMD ["cat", "/app/hello.txt"]
"#;
    let epoch = "1700000000";
    let t = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for i in 0..2 {
        let k = Kiln::new();
        let out = k
            .cmd()
            .env("SOURCE_DATE_EPOCH", epoch)
            .args([
                "import",
                "--change",
                "CMD [\"sh\"]",
                busybox_rootfs().to_str().unwrap(),
                "busybox:latest",
            ])
            .output()
            .unwrap();
        assert_ok(&out, "import busybox with SOURCE_DATE_EPOCH");
        let ctx = t.path().join(format!("ctx{i}"));
        let src = t.path().join("src");
        if i == 0 {
            context(&src, REPRO);
        }
        copy_dir(&src, &ctx);
        let iid = t.path().join(format!("iid{i}"));
        let out = k.run(&[
            "build",
            "--build-arg",
            &format!("SOURCE_DATE_EPOCH={epoch}"),
            "--iidfile",
            iid.to_str().unwrap(),
            "-o",
            &format!(
                "type=oci,dest={}",
                t.path().join(format!("{i}.tar")).display()
            ),
            ctx.to_str().unwrap(),
        ]);
        assert_ok(&out, "reproducible build");
        digests.push(std::fs::read_to_string(&iid).unwrap());
        if i == 0 {
            // A different moment: file mtimes in the second context and every build time differ.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
    }
    assert_eq!(digests[0], digests[1]);
    let a = std::fs::read(t.path().join("0.tar")).unwrap();
    let b = std::fs::read(t.path().join("1.tar")).unwrap();
    assert!(a == b, "the two OCI archives differ byte-wise");
    let cfg = tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("oci-archive:{}", t.path().join("0.tar").display()),
        ],
    );
    let cfg: serde_json::Value = serde_json::from_slice(&cfg.stdout).unwrap();
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
    for h in cfg["history"].as_array().unwrap() {
        assert_eq!(h["created"], "2023-11-14T22:13:20Z", "{h}");
    }
}

/// The media types of a manifest's layers.
fn layer_media_types(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap_or_else(|| panic!("a manifest with layers: {manifest}"))
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Issue 18 item 4: a base pulled with Docker media types kept them inside the OCI manifest of
/// `-o type=oci` and `kiln push`; the OCI archive had no `manifest.json` and no platform on its
/// index entry.
#[test]
fn oci_output_kept_docker_layer_media_types_of_a_pulled_base() {
    const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    let (addr, _guard) = common::registry();
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n).to_str().unwrap().to_string();

    // A base image with Docker schema2 media types in the registry.
    let k = Kiln::with_busybox();
    let base = format!("{addr}/{}:base", common::unique("docker-types"));
    let base_ctx = t.path().join("base");
    context(&base_ctx, "FROM busybox:latest\nRUN echo base > /base\n");
    let out = k.run(&[
        "build",
        "-o",
        &format!("type=registry,name={base},oci-mediatypes=false"),
        base_ctx.to_str().unwrap(),
    ]);
    assert_ok(&out, "push a base with Docker media types");
    let pushed = skopeo_inspect_remote(&base);
    assert_eq!(layer_media_types(&pushed), [DOCKER_GZIP, DOCKER_GZIP]);

    // A fresh store pulls it and builds on it.
    let k2 = Kiln::new();
    let ctx = t.path().join("ctx");
    context(&ctx, &format!("FROM {base}\nCOPY hello.txt /\n"));
    let tag = format!("{addr}/{}:v1", common::unique("oci-types"));
    let out = k2.run(&[
        "build",
        "-t",
        &tag,
        "-o",
        &format!("type=oci,dest={}", p("oci.tar")),
        "-o",
        &format!("type=oci,dest={},oci-mediatypes=false", p("docker.tar")),
        ctx.to_str().unwrap(),
    ]);
    assert_ok(&out, "build on the Docker-typed base");

    let oci = skopeo_inspect(&format!("oci-archive:{}", p("oci.tar")));
    assert_eq!(
        oci["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        oci["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(layer_media_types(&oci), [OCI_GZIP, OCI_GZIP, OCI_GZIP]);
    // The base layers are the pulled blobs, only typed anew.
    let base_digests: Vec<&serde_json::Value> = pushed["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    let oci_digests: Vec<&serde_json::Value> = oci["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["digest"])
        .collect();
    assert_eq!(oci_digests[..2], base_digests[..]);

    let docker = skopeo_inspect(&format!("oci-archive:{}", p("docker.tar")));
    assert_eq!(
        docker["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        docker["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    assert_eq!(
        layer_media_types(&docker),
        [DOCKER_GZIP, DOCKER_GZIP, DOCKER_GZIP]
    );

    // The archive carries BuildKit's `manifest.json` and the platform on the index entry.
    let unpacked = t.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    tool(
        "tar",
        &["-xf", &p("oci.tar"), "-C", unpacked.to_str().unwrap()],
    );
    let read_json = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(unpacked.join(name)).unwrap()).unwrap()
    };
    let index = read_json("index.json");
    let config = config_of(&format!("oci-archive:{}", p("oci.tar")));
    assert_eq!(
        index["manifests"][0]["platform"],
        serde_json::json!({"architecture": config["architecture"], "os": "linux"}),
        "{index}"
    );
    let blob_path = |d: &serde_json::Value| {
        format!(
            "blobs/sha256/{}",
            d.as_str().unwrap().trim_start_matches("sha256:")
        )
    };
    let docker_manifest = read_json("manifest.json");
    assert_eq!(
        docker_manifest,
        serde_json::json!([{
            "Config": blob_path(&oci["config"]["digest"]),
            "RepoTags": null,
            "Layers": oci_digests.iter().map(|d| blob_path(d)).collect::<Vec<_>>(),
        }])
    );
    // umoci reads the layout (named by the `-t` tag) and unpacks every layer.
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
    let bundle = t.path().join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:v1", unpacked.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert!(bundle.join("rootfs/base").is_file());
    assert!(bundle.join("rootfs/hello.txt").is_file());

    // `kiln push` of the stored image: OCI types throughout too.
    assert_ok(&k2.run(&["push", &tag]), "push the built image");
    let remote = skopeo_inspect_remote(&tag);
    assert_eq!(
        remote["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(layer_media_types(&remote), [OCI_GZIP, OCI_GZIP, OCI_GZIP]);

    // docker load reads the OCI archive, where an engine answers.
    match docker_host() {
        Some(host) => {
            let out = Command::new("docker")
                .env("DOCKER_HOST", &host)
                .args(["load", "-i", &p("oci.tar")])
                .output()
                .unwrap();
            assert_ok(&out, &format!("DOCKER_HOST={host} docker load"));
            // Untagged, as BuildKit's archive loads: known by its image ID.
            let id = oci["config"]["digest"].as_str().unwrap();
            let out = Command::new("docker")
                .env("DOCKER_HOST", &host)
                .args(["rmi", id])
                .output()
                .unwrap();
            assert_ok(&out, &format!("DOCKER_HOST={host} docker rmi {id}"));
        }
        None => eprintln!("docker load skipped: no Docker engine answers `docker info` here"),
    }
}

fn skopeo_inspect_remote(name: &str) -> serde_json::Value {
    let out = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{name}"),
        ],
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn config_of(transport: &str) -> serde_json::Value {
    let out = tool("skopeo", &["inspect", "--config", transport]);
    serde_json::from_slice(&out.stdout).unwrap()
}
