//! Compilation tests: golden files of the definition and image config for small Dockerfiles
//! (regenerate with `KILN_BLESS=1`), plus checks of the invariants the exporter relies on.

use kiln_frontend::{compile, BuildOptions, Compiled, FrontendError, ImageResolver, ResolvedImage};
use kiln_llb::{file_action, op, Definition};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// Resolves any name to a digest-pinned docker.io reference with a busybox-like config; names
/// starting with `missing` fail.
#[derive(Default)]
struct FakeResolver {
    calls: Mutex<Vec<String>>,
}

impl ImageResolver for FakeResolver {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
        self.calls
            .lock()
            .map_err(|e| e.to_string())?
            .push(reference.to_string());
        if reference.starts_with("missing") {
            return Err("manifest unknown".into());
        }
        let mut name = reference.to_string();
        if !name.contains('/') {
            name = format!("library/{name}");
        }
        if !name.split('/').next().is_some_and(|h| h.contains('.')) {
            name = format!("docker.io/{name}");
        }
        if !name
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            name.push_str(":latest");
        }
        let digest = kiln_llb::digest_bytes(name.as_bytes());
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["sh"],
                "Labels": {"base": name.clone()}
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:1111111111111111111111111111111111111111111111111111111111111111"]},
            "history": [
                {"created_by": "ADD rootfs.tar / # base", "comment": "base layer"},
                {"created_by": "CMD [\"sh\"]", "empty_layer": true}
            ]
        });
        Ok(ResolvedImage {
            reference: format!("{name}@{digest}"),
            config: serde_json::from_value(config.clone()).map_err(|e| e.to_string())?,
            raw_config: config,
        })
    }
}

fn opts() -> BuildOptions {
    BuildOptions {
        dockerfile_name: "Dockerfile".into(),
        build_args: BTreeMap::new(),
        target: None,
        platform: ("linux".into(), "amd64".into()),
        context_name: "context".into(),
        exclude_patterns: vec![],
        no_cache: false,
        named_contexts: BTreeMap::new(),
        prefix_platform: false,
    }
}

const HELLO: &str = r#"ARG BASE=busybox
FROM ${BASE} AS build
ARG GREETING=hello
ENV APP=/app
WORKDIR $APP
COPY greet.sh .
RUN chmod +x greet.sh && ./greet.sh "$GREETING" > out.txt
RUN ["sh", "-c", "echo exec-form >> out.txt"]
FROM build AS unused
RUN exit 1
FROM ${BASE}
LABEL org.example.demo=true
EXPOSE 8080/tcp
COPY --from=build /app/out.txt /srv/out.txt
USER nobody
WORKDIR /srv
ENTRYPOINT ["cat"]
CMD ["/srv/out.txt"]
"#;

/// (golden name, Dockerfile, options).
fn cases() -> Vec<(&'static str, &'static str, BuildOptions)> {
    let mut v = Vec::new();
    v.push(("hello", HELLO, opts()));

    let mut o = opts();
    o.build_args.insert("VERSION".into(), "2.0".into());
    o.build_args.insert("UNUSED".into(), "x".into());
    o.build_args
        .insert("HTTP_PROXY".into(), "http://proxy:3128".into());
    o.platform = ("linux".into(), "arm64".into());
    v.push((
        "args",
        r#"ARG IMAGE=alpine
ARG TAG=3.20
ARG VERSION=1.0
FROM ${IMAGE}:${TAG}
ARG VERSION
ARG TAG
ARG TARGETARCH
ARG TARGETPLATFORM
ARG LOCAL="a b" EMPTY
ENV VERSION_ENV=$VERSION
ARG VERSION_ENV=shadowed
RUN echo $VERSION $TAG $TARGETARCH $LOCAL $VERSION_ENV
"#,
        o,
    ));

    v.push((
        "env_workdir_user",
        r#"FROM busybox
ENV A=1 B="two words"
ENV C ${A}-legacy
ENV PATH=/opt/bin:$PATH
WORKDIR /srv
WORKDIR app/../data
USER 1000:1000
WORKDIR sub
RUN touch x
USER nobody
RUN ["id"]
WORKDIR /
"#,
        opts(),
    ));

    let mut o = opts();
    o.exclude_patterns = vec!["*.log".into(), "!keep.log".into()];
    v.push((
        "copy",
        r#"FROM busybox AS base
RUN echo base > /base.txt
FROM busybox
WORKDIR /app
COPY a.txt b.txt ./
COPY --chown=app:staff --chmod=0640 conf/ /etc/app/
COPY src dest
COPY *.go /go/
COPY ["with space.txt", "/spaced/"]
COPY --from=base /base.txt .
COPY --from=0 /base.txt /again.txt
COPY --from=alpine:3.20 /etc/os-release /os-release
COPY --exclude=*.tmp --link data /data/
ADD local.txt /added/
COPY --parents ./src/./pkg/*/go.mod lib/a.txt /parents/
ADD --chown=1:2 --chmod=0755 --checksum=sha256:24d4ba2ef1d4d8ba9a5c56c3a0e1a2fd4a6e6e7bb8a6f05a2af7e0c2f5b0b7a1 https://example.com/dl/tool.sh /usr/local/bin/
ADD http://example.com/ /downloads/
"#,
        o,
    ));

    v.push((
        "cmd_entrypoint",
        r#"FROM busybox AS base
CMD ["echo", "base"]
FROM base AS keeps
ENTRYPOINT ["/entry"]
FROM busybox AS resets
ENTRYPOINT /entry.sh --flag
FROM resets
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN echo piped | cat
CMD run this
"#,
        opts(),
    ));

    v.push((
        "metadata",
        r#"FROM busybox
MAINTAINER Jane Doe <jane@example.com>
LABEL version="1.0" description='a "quoted" thing' multi=a\ b
EXPOSE 80 53/udp 8000-8002
VOLUME ["/data", "/logs"]
VOLUME /cache
STOPSIGNAL SIGINT
HEALTHCHECK --interval=30s --timeout=3s --retries=3 CMD wget -q -O- http://localhost/ || exit 1
ONBUILD RUN echo triggered
ONBUILD COPY . /src
"#,
        opts(),
    ));

    v.push((
        "scratch",
        r#"FROM scratch
COPY hello /hello
WORKDIR /data
CMD ["/hello"]
"#,
        opts(),
    ));

    let mut o = opts();
    o.target = Some("Build".into());
    o.no_cache = true;
    v.push((
        "target_no_cache",
        r#"FROM busybox AS build
RUN echo build > /out
FROM busybox AS test
RUN exit 1
FROM busybox
COPY --from=build /out /out
"#,
        o,
    ));

    v.push((
        "heredoc",
        "FROM busybox\nENV WHO=world\nRUN <<EOF\necho one\necho two\nEOF\nRUN cat > /f <<EOT\nline $HOME\nEOT\nCOPY <<EOF /etc/greeting\nhello \"$WHO\"\nEOF\nCOPY <<'RAW' /etc/raw\nkeep $WHO\nRAW\n",
        opts(),
    ));

    v.push((
        "run_mounts",
        r#"FROM busybox AS deps
RUN echo deps > /deps.txt
FROM busybox
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache,sharing=locked \
    --mount=type=tmpfs,target=/tmp,size=64m \
    --mount=type=bind,from=deps,source=/deps.txt,target=deps.txt \
    --mount=type=bind,target=/ctx,rw \
    --mount=type=secret,id=token \
    --mount=type=ssh \
    cat deps.txt
"#,
        opts(),
    ));

    v.push((
        "run_flags",
        r#"FROM busybox
RUN --network=none echo offline
RUN --network=host ["echo", "online"]
HEALTHCHECK NONE
"#,
        opts(),
    ));

    let mut o = opts();
    o.named_contexts.insert(
        "deps".into(),
        kiln_frontend::NamedContext::Local("named:deps".into()),
    );
    o.named_contexts.insert(
        "alpine".into(),
        kiln_frontend::NamedContext::Image("alpine:3.20".into()),
    );
    o.named_contexts.insert(
        "tools".into(),
        kiln_frontend::NamedContext::Image("busybox:1.36".into()),
    );
    v.push((
        "add_git",
        r#"FROM busybox
ADD https://example.com/org/repo.git#v1.2:docs /docs
ADD --keep-git-dir --chown=1:2 --chmod=0750 git@example.com:org/repo.git#main /src/
ADD --link git://example.com/repo https://example.com/other.git /many/
"#,
        opts(),
    ));
    v.push((
        "named_contexts",
        r#"FROM busybox AS tools
RUN exit 1
FROM alpine
COPY --from=deps /lock.json /app/
COPY --from=tools /bin/busybox /bin/
SHELL ["/bin/ash", "-eo", "pipefail", "-c"]
HEALTHCHECK --interval=5s --retries=2 CMD wget -q localhost
ONBUILD RUN echo child
"#,
        o,
    ));
    v
}

/// Recursively sorted JSON, so HashMap-backed fields compare stably.
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> =
                map.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

fn render(c: &Compiled) -> String {
    let warnings: Vec<Value> = c
        .warnings
        .iter()
        .map(|w| serde_json::json!({"line": w.line, "message": w.message}))
        .collect();
    let doc = serde_json::json!({
        "definition": c.definition.to_json(),
        "image_config": serde_json::to_value(&c.image_config).expect("config serializes"),
        "config_extras": c.config_extras,
        "warnings": warnings,
    });
    let mut text = serde_json::to_string_pretty(&canonical(doc)).expect("json renders");
    text.push('\n');
    text
}

#[test]
fn golden_files_match() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("KILN_BLESS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for (name, dockerfile, o) in cases() {
        let compiled = match compile(dockerfile, &o, &FakeResolver::default()) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{name}: compile failed: {e}"));
                continue;
            }
        };
        let got = render(&compiled);
        let path = dir.join(format!("{name}.json"));
        if bless {
            std::fs::create_dir_all(&dir).expect("create golden dir");
            std::fs::write(&path, &got).expect("write golden file");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == got => {}
            Ok(_) => failures.push(format!(
                "{name}: output differs from {} (run with KILN_BLESS=1 to accept)\n{got}",
                path.display()
            )),
            Err(e) => failures.push(format!("{name}: cannot read {}: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Inputs of the op that produced `digest`'s filesystem chain, root first: (digest, kind).
fn chain(def: &Definition) -> Vec<&'static str> {
    let ops: BTreeMap<String, &kiln_llb::Op> = def.ops_with_digests().into_iter().collect();
    let mut out = Vec::new();
    let mut cur = def
        .root
        .as_ref()
        .map(|r| r.digest.clone())
        .unwrap_or_default();
    while let Some(op) = ops.get(&cur) {
        let next = match &op.kind {
            Some(op::Kind::Exec(e)) => {
                out.push("exec");
                let rootfs = e.mounts.iter().find(|m| m.dest == "/");
                rootfs.and_then(|m| usize::try_from(m.input).ok())
            }
            Some(op::Kind::File(f)) => {
                out.push("file");
                usize::try_from(f.base).ok()
            }
            // `COPY --link`: one layer (the copy) on top of the first input.
            Some(op::Kind::Merge(_)) => {
                out.push("merge");
                Some(0)
            }
            _ => None,
        };
        cur = match next.and_then(|i| op.inputs.get(i)) {
            Some(input) => input.digest.clone(),
            None => break,
        };
    }
    out.reverse();
    out
}

#[test]
fn history_matches_layer_producing_ops() {
    for (name, dockerfile, o) in cases() {
        let c = compile(dockerfile, &o, &FakeResolver::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let history = c.image_config.history().clone().unwrap_or_default();
        let from_scratch = !history
            .first()
            .and_then(|h| h.created_by().clone())
            .is_some_and(|s| s.ends_with("# base"));
        let base_layers = if from_scratch { 0 } else { 1 };
        let layers = history
            .iter()
            .filter(|h| !h.empty_layer().unwrap_or(false))
            .count();
        assert_eq!(
            layers - base_layers,
            chain(&c.definition).len(),
            "{name}: history {:#?}",
            history
        );
        assert!(c.image_config.rootfs().diff_ids().is_empty(), "{name}");
        c.definition
            .validate()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

fn compile_err(dockerfile: &str, o: &BuildOptions) -> String {
    match compile(dockerfile, o, &FakeResolver::default()) {
        Ok(_) => panic!("expected an error for:\n{dockerfile}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hello_example_only_builds_what_the_target_needs() {
    let resolver = FakeResolver::default();
    let c = compile(HELLO, &opts(), &resolver).expect("compiles");
    let json = c.definition.to_json().to_string();
    assert!(!json.contains("exit 1"), "unused stage compiled: {json}");
    // ${BASE} is resolved once and shared by both stages.
    assert_eq!(
        *resolver.calls.lock().expect("lock"),
        vec!["busybox".to_string()]
    );
    let config = c.image_config.config().clone().expect("config");
    assert_eq!(config.entrypoint().clone(), Some(vec!["cat".to_string()]));
    assert_eq!(config.cmd().clone(), Some(vec!["/srv/out.txt".to_string()]));
    assert_eq!(config.user().clone(), Some("nobody".to_string()));
    assert_eq!(config.working_dir().clone(), Some("/srv".to_string()));
    assert_eq!(
        config.exposed_ports().clone(),
        Some(vec!["8080/tcp".to_string()])
    );
    assert_eq!(chain(&c.definition), vec!["file", "file"]);
}

#[test]
fn unknown_stage_suggests_a_name() {
    let err = compile_err(
        "FROM busybox AS build\nRUN true\nFROM busybox\nCOPY --from=bulid /a /a\n",
        &opts(),
    );
    assert!(err.contains("Dockerfile:4"), "{err}");
    assert!(
        err.contains("no stage named `bulid` (did you mean `build`?)"),
        "{err}"
    );

    let mut o = opts();
    o.target = Some("buld".into());
    let err = compile_err("FROM busybox AS build\nFROM busybox AS final\n", &o);
    assert!(
        err.contains("target stage `buld` not found (did you mean `build`?)"),
        "{err}"
    );
}

#[test]
fn copy_from_unrelated_name_is_an_image() {
    let resolver = FakeResolver::default();
    let c = compile(
        "FROM busybox AS build\nFROM busybox\nCOPY --from=nginx /etc/nginx /etc/nginx\n",
        &opts(),
        &resolver,
    )
    .expect("compiles");
    assert!(c
        .definition
        .to_json()
        .to_string()
        .contains("docker-image://docker.io/library/nginx:latest@"));
}

#[test]
fn cycles_are_errors() {
    let err = compile_err(
        "FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /y /y\n",
        &opts(),
    );
    assert!(err.contains("depends on itself"), "{err}");
}

#[test]
fn bad_input_gives_located_errors() {
    for (dockerfile, want) in [
        ("FROM busybox\nENV ONLYKEY\n", "Dockerfile:2"),
        ("FROM busybox\nENV ONLYKEY\n", "write `ENV ONLYKEY=value`"),
        (
            "FROM busybox\nENV A=1 B 2\n",
            "did you mean `B=2`?",
        ),
        ("FROM busybox\nLABEL a=1 b\n", "did you mean `b=`?"),
        ("FROM busybox\nCOPY --form=x a b\n", "did you mean `from`"),
        (
            "FROM busybox\nRUN --mount=type=cache true\n",
            "needs a target",
        ),
        (
            "FROM busybox\nRUN --mount=type=nfs,target=/x true\n",
            "unknown mount type `nfs`",
        ),
        (
            "FROM busybox\nRUN --mount=type=cache,target=/x,sharng=locked true\n",
            "did you mean `sharing`",
        ),
        (
            "FROM busybox\nADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://h/r.git /src\n",
            "expected hex commit hash",
        ),
        (
            "FROM busybox\nADD --checksum=sha256:abc https://example.com/x /x\n",
            "64 lowercase hex",
        ),
        (
            "FROM busybox\nADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 local.txt /x\n",
            "http(s) URL sources only",
        ),
        ("FROM busybox\nCOPY --parents a/b /x\n", "write the destination as `/x/`"),
        (
            "# syntax=ghcr.io/acme/frontend:1\nFROM busybox\n",
            "custom frontend image",
        ),
        ("FROM busybox\nEXPOSE http\n", "invalid port"),
        (
            "FROM busybox\nHEALTHCHECK --interval=5 CMD true\n",
            "duration",
        ),
        ("FROM busybox\nSHELL /bin/bash -c\n", "JSON"),
        (
            "FROM missing-image\n",
            "cannot resolve image `missing-image`: manifest unknown",
        ),
        ("RUN true\n", "no `FROM`"),
        ("FROM busybox AS 1bad\n", "not a valid stage name"),
        ("FROM busybox\nCOPY --chmod=rwx a /a\n", "octal"),
        (
            "FROM busybox\nCOPY --from=7 /a /a\n",
            "no stage with index 7",
        ),
        ("ARG B\nFROM ${B}\n", "expands to nothing"),
    ] {
        let err = compile_err(dockerfile, &opts());
        assert!(err.contains(want), "{dockerfile:?}: {err}");
    }
    let err = compile_err("FROM busybox\nENV ONLYKEY\n", &opts());
    assert!(
        matches!(
            compile(
                "FROM busybox\nCOPY --form=x a b\n",
                &opts(),
                &FakeResolver::default()
            ),
            Err(FrontendError::Instruction { line: 2, .. })
        ),
        "{err}"
    );
}

#[test]
fn copy_actions_follow_docker_rules() {
    let c = compile(
        "FROM busybox\nWORKDIR /app\nCOPY a.txt b.txt ./\nCOPY dir sub/\nCOPY f renamed\n",
        &opts(),
        &FakeResolver::default(),
    )
    .expect("compiles");
    let mut dests = Vec::new();
    for op in &c.definition.ops {
        if let Some(op::Kind::File(f)) = &op.kind {
            for a in &f.actions {
                if let Some(file_action::Action::Copy(cp)) = &a.action {
                    dests.push((cp.src.clone(), cp.dest.clone()));
                    assert!(cp.allow_wildcard && cp.follow_symlinks && cp.create_dest_path);
                }
            }
        }
    }
    assert_eq!(
        dests,
        vec![
            ("/a.txt".to_string(), "/app/".to_string()),
            ("/b.txt".to_string(), "/app/".to_string()),
            ("/dir".to_string(), "/app/sub/".to_string()),
            ("/f".to_string(), "/app/renamed".to_string()),
        ]
    );
}

#[test]
fn repository_hello_example_compiles() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/examples/hello/Dockerfile");
    let text = std::fs::read_to_string(&path).expect("the hello example is in the repository");
    let c = compile(&text, &opts(), &FakeResolver::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.definition.to_json().to_string().contains("exit 1"));
    let labels = c
        .image_config
        .config()
        .as_ref()
        .and_then(|c| c.labels().clone())
        .unwrap_or_default();
    assert_eq!(
        labels
            .get("org.opencontainers.image.title")
            .map(String::as_str),
        Some("kiln hello")
    );
    assert_eq!(chain(&c.definition), vec!["file", "file"]);
}

/// BuildKit v0.11.6's `dispatchCmd` sets `ArgsEscaped` on every `CMD` (shell or exec form);
/// `ENTRYPOINT` neither sets nor clears it.
#[test]
fn cmd_leaves_args_escaped_out_of_the_config() {
    let extras = |dockerfile: &str| {
        compile(dockerfile, &opts(), &FakeResolver::default())
            .expect("compiles")
            .config_extras
    };
    for df in [
        "FROM scratch\nCMD [\"/app\"]\n",
        "FROM busybox\nCMD echo hi\n",
        "FROM busybox\nCMD [\"a\"]\nENTRYPOINT [\"b\"]\n",
        "FROM busybox AS base\nCMD [\"a\"]\nFROM base\nENTRYPOINT [\"b\"]\n",
    ] {
        assert_eq!(
            extras(df).get("ArgsEscaped"),
            Some(&Value::Bool(true)),
            "{df}"
        );
    }
    for df in [
        "FROM scratch\nENTRYPOINT [\"/app\"]\n",
        "FROM busybox\nENTRYPOINT echo hi\n",
    ] {
        assert_eq!(extras(df).get("ArgsEscaped"), None, "{df}");
    }
}

/// `FROM stage` applies an image base's rules (BuildKit clones only the stage's image config).
#[test]
fn stage_base_kept_cmd_after_entrypoint_and_skipped_its_onbuild_triggers() {
    let c = compile(
        "FROM busybox AS base\nCMD [\"a\"]\nFROM base\nENTRYPOINT [\"b\"]\n",
        &opts(),
        &FakeResolver::default(),
    )
    .expect("compiles");
    let config = c.image_config.config().clone().expect("config");
    assert_eq!(config.entrypoint().clone(), Some(vec!["b".to_string()]));
    assert_eq!(
        config.cmd().clone(),
        None,
        "ENTRYPOINT clears the stage's CMD"
    );

    let dockerfile = "FROM busybox AS base\nONBUILD RUN echo trig1\nONBUILD RUN echo trig2\n\
                      FROM base AS child\nRUN echo own\nFROM child\nRUN echo grandchild\n";
    for target in ["child", "final"] {
        let mut o = opts();
        if target == "child" {
            o.target = Some("child".into());
        }
        let c = compile(dockerfile, &o, &FakeResolver::default()).expect("compiles");
        let json = c.definition.to_json().to_string();
        // A command as the exec op's argument (its step name holds it too, unquoted).
        let at = |cmd: &str| {
            let arg = format!("\"{cmd}\"");
            assert_eq!(
                json.matches(&arg).count(),
                1,
                "{target}: `{cmd}` once in {json}"
            );
            json.find(&arg).unwrap_or_default()
        };
        assert!(
            at("echo trig1") < at("echo trig2") && at("echo trig2") < at("echo own"),
            "{target}: triggers run in order, before the stage's own steps: {json}"
        );
        assert_eq!(c.config_extras.get("OnBuild"), None, "{target}");
    }
}

/// BuildKit's `emptyImage` gives `FROM scratch` `WorkingDir` `/` besides the default `PATH`;
/// kiln left `WorkingDir` out (found by `cargo xtask differential`, case multistage-scratch).
#[test]
fn from_scratch_left_working_dir_out_of_the_config() {
    let c = compile(
        "FROM scratch\nCOPY f /f\n",
        &opts(),
        &FakeResolver::default(),
    )
    .expect("compiles");
    let config = c.image_config.config().clone().expect("config");
    assert_eq!(config.working_dir().clone(), Some("/".to_string()));
    let c = compile(
        "FROM scratch\nWORKDIR /w\n",
        &opts(),
        &FakeResolver::default(),
    )
    .expect("compiles");
    let config = c.image_config.config().clone().expect("config");
    assert_eq!(config.working_dir().clone(), Some("/w".to_string()));
}

// Issue 13 item 7: `kiln debug parse` now dumps these (the parser does not validate); a build
// still fails on them with the message and line it always gave, even in a stage it skips.
#[test]
fn parser_validated_instruction_words_still_fail_the_build() {
    let mut target_a = opts();
    target_a.target = Some("a".into());
    for (dockerfile, o, want) in [
        (
            "FROM busybox\n\nRUNN echo\n",
            opts(),
            "Dockerfile:3: unknown instruction `RUNN`: did you mean `RUN`?",
        ),
        (
            "FROM busybox\nONBUILD ONBUILD RUN a\n",
            opts(),
            "Dockerfile:2: chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        ),
        (
            "FROM busybox\nONBUILD FROM y\n",
            opts(),
            "Dockerfile:2: `FROM` isn't allowed as an ONBUILD trigger",
        ),
        (
            "FROM busybox\nONBUILD COPPY a b\n",
            opts(),
            "Dockerfile:2: unknown instruction `COPPY`: did you mean `COPY`?",
        ),
        (
            "\\",
            opts(),
            "Dockerfile:1: expected an instruction such as `FROM` or `RUN`",
        ),
        (
            "FROM busybox AS a\nFROM busybox AS b\nRUNN true\n",
            target_a,
            "Dockerfile:3: unknown instruction `RUNN`: did you mean `RUN`?",
        ),
    ] {
        assert_eq!(compile_err(dockerfile, &o), want, "{dockerfile:?}");
    }
    let err = compile_err("FROM busybox\nZZZZZ\n", &opts());
    assert!(
        err.starts_with("Dockerfile:2: unknown instruction `ZZZZZ`: use one of `ADD`"),
        "{err}"
    );
}

/// KNOWN.md `error-copy-from-variable`: BuildKit takes `--from` as written and refuses a value
/// with a variable; kiln expanded it and built.
#[test]
fn error_copy_from_variable() {
    for dockerfile in [
        "ARG BASE=busybox\nFROM $BASE\nARG BASE\nCOPY --from=$BASE /etc/passwd /passwd-copy\n",
        "FROM busybox AS build\nFROM busybox\nCOPY --from=${STAGE:-build} /a /a\n",
    ] {
        match compile(dockerfile, &opts(), &FakeResolver::default()) {
            Err(FrontendError::Instruction { line, message, .. }) => {
                assert_eq!(line, dockerfile.lines().count(), "{dockerfile:?}");
                assert!(
                    message.starts_with("variable expansion is not supported for `--from`"),
                    "{message}"
                );
            }
            other => panic!("{dockerfile:?}: {other:?}"),
        }
    }
    // Stage names, indexes and image references as written still work.
    for from in ["build", "0", "busybox:1.36"] {
        let df = format!("FROM busybox AS build\nFROM busybox\nCOPY --from={from} /a /a\n");
        compile(&df, &opts(), &FakeResolver::default()).unwrap_or_else(|e| panic!("{df}: {e}"));
    }
}

/// KNOWN.md `copy-multiple-no-slash`: `COPY a b /dst` builds, as in BuildKit, which copies each
/// source to `/dst` in turn (the destination ends as the last source); kiln refused it.
#[test]
fn copy_multiple_no_slash() {
    let c = compile(
        "FROM busybox\nCOPY a b /dst\n",
        &opts(),
        &FakeResolver::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut copies = Vec::new();
    for op in &c.definition.ops {
        if let Some(op::Kind::File(f)) = &op.kind {
            for a in &f.actions {
                if let Some(file_action::Action::Copy(cp)) = &a.action {
                    copies.push((cp.src.clone(), cp.dest.clone()));
                }
            }
        }
    }
    assert_eq!(
        copies,
        [("/a".into(), "/dst".into()), ("/b".into(), "/dst".into())] as [(String, String); 2]
    );
}

/// KNOWN.md `cmd-empty` and `entrypoint-empty`: `CMD []` and `ENTRYPOINT []` leave the field out
/// of the config, as BuildKit's Go writer does (`omitempty`); kiln wrote `[]`.
#[test]
fn cmd_empty_and_entrypoint_empty() {
    let config = |dockerfile: &str| {
        let c = compile(dockerfile, &opts(), &FakeResolver::default())
            .unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::to_value(&c.image_config).expect("serialises");
        (json["config"].clone(), c.config_extras)
    };
    let (cmd_empty, extras) = config("FROM busybox\nCMD []\n");
    assert_eq!(cmd_empty.get("Cmd"), None, "{cmd_empty}");
    assert_eq!(extras.get("ArgsEscaped"), Some(&Value::Bool(true)));
    let (entrypoint_empty, _) =
        config("FROM busybox AS e\nENTRYPOINT [\"/bin/echo\"]\nFROM e\nENTRYPOINT []\n");
    assert_eq!(
        entrypoint_empty.get("Entrypoint"),
        None,
        "{entrypoint_empty}"
    );
    assert_eq!(entrypoint_empty.get("Cmd"), None, "{entrypoint_empty}");
    let (kept, _) = config("FROM busybox\nENTRYPOINT [\"/bin/echo\"]\nCMD [\"hi\"]\n");
    assert_eq!(kept["Entrypoint"], serde_json::json!(["/bin/echo"]));
    assert_eq!(kept["Cmd"], serde_json::json!(["hi"]));
}
