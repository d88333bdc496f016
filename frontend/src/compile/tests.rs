//! Unit tests of compilation rules: stage selection, ARG scoping, CMD/ENTRYPOINT, suggestions.

use super::*;
use kiln_llb::ExecMeta;
use oci_spec::image::ImageConfiguration;
use std::sync::Mutex;

#[derive(Default)]
struct Resolver {
    calls: Mutex<Vec<String>>,
    config: Option<ImageConfiguration>,
    raw: serde_json::Value,
}

impl ImageResolver for Resolver {
    fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
        self.calls
            .lock()
            .map_err(|e| e.to_string())?
            .push(reference.to_string());
        Ok(ResolvedImage {
            reference: format!("{reference}@sha256:{}", "0".repeat(64)),
            config: self.config.clone().unwrap_or_default(),
            raw_config: self.raw.clone(),
        })
    }
}

fn opts() -> BuildOptions {
    BuildOptions {
        platform: ("linux".into(), "amd64".into()),
        ..Default::default()
    }
}

fn build(df: &str, o: &BuildOptions) -> Compiled {
    match compile(df, o, &Resolver::default()) {
        Ok(c) => c,
        Err(e) => panic!("compile failed: {e}"),
    }
}

fn exec_metas(c: &Compiled) -> Vec<ExecMeta> {
    c.definition
        .ops
        .iter()
        .filter_map(|op| match &op.kind {
            Some(op::Kind::Exec(e)) => e.meta.clone(),
            _ => None,
        })
        .collect()
}

fn env_of(meta: &ExecMeta, key: &str) -> Option<String> {
    meta.env
        .iter()
        .find_map(|e| e.strip_prefix(&format!("{key}=")).map(str::to_string))
}

#[test]
fn unused_stages_are_not_compiled_or_resolved() {
    let df = "FROM alpine AS never\nRUN echo never\nFROM busybox AS used\nRUN echo used\nFROM used\nRUN echo last\n";
    let resolver = Resolver::default();
    let c = match compile(df, &opts(), &resolver) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let json = c.definition.to_json().to_string();
    assert!(!json.contains("never"), "{json}");
    assert!(json.contains("echo used") && json.contains("echo last"));
    assert_eq!(
        *resolver.calls.lock().unwrap_or_else(|e| e.into_inner()),
        vec!["busybox"]
    );
}

#[test]
fn target_selects_a_stage_case_insensitively() {
    let mut o = opts();
    o.target = Some("FIRST".into());
    let c = build(
        "FROM busybox AS first\nRUN echo one\nFROM busybox\nRUN echo two\n",
        &o,
    );
    let metas = exec_metas(&c);
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0].args[2], "echo one");
}

#[test]
fn stage_names_label_steps_only_in_multi_stage_files() {
    let c = build("FROM busybox\nRUN true\n", &opts());
    let names: Vec<&str> = c
        .definition
        .metadata
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names[1], "[2/2] RUN true");
    let c = build("FROM busybox AS a\nFROM busybox\nRUN true\n", &opts());
    let run = c
        .definition
        .metadata
        .iter()
        .find(|m| m.name.contains("RUN"));
    assert_eq!(run.map(|m| m.name.as_str()), Some("[stage-1 2/2] RUN true"));
    assert_eq!(run.map(|m| m.stage.as_str()), Some("stage-1"));
    assert_eq!(run.map(|m| m.location.as_str()), Some("Dockerfile:3"));
}

fn step_names(c: &Compiled) -> Vec<&str> {
    c.definition
        .metadata
        .iter()
        .map(|m| m.name.as_str())
        .collect()
}

#[test]
fn step_names_carry_the_stage_platform_and_its_target_only_for_several_platforms() {
    let df = "FROM --platform=linux/amd64 busybox AS build\nRUN fetch\nARG TARGETARCH\n\
              RUN make\nWORKDIR /src\n\
              FROM --platform=linux/amd64 busybox AS other\nARG TARGETPLATFORM=windows/amd64\n\
              RUN x\n\
              FROM busybox\nCOPY --from=build /x /x\nCOPY --from=other /y /y\n";
    let arm = BuildOptions {
        platform: ("linux".into(), "arm64".into()),
        ..opts()
    };
    // One platform, even a foreign one: no platform in the names, as BuildKit.
    let c = build(df, &arm);
    assert!(
        step_names(&c).contains(&"[build 3/4] RUN make"),
        "{:?}",
        step_names(&c)
    );
    let c = build(
        df,
        &BuildOptions {
            prefix_platform: true,
            ..arm.clone()
        },
    );
    let names = step_names(&c);
    for want in [
        "[linux/amd64 build 1/4] FROM busybox@sha256:",
        "[linux/amd64 build 2/4] RUN fetch",
        "[linux/amd64->arm64 build 3/4] RUN make",
        "[linux/amd64->arm64 build 4/4] WORKDIR /src",
        "[linux/amd64->windows/amd64 other 2/2] RUN x",
        "[linux/arm64 stage-2 2/3] COPY --from=build /x /x",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "{want}: {names:?}"
        );
    }
    // The target's own architecture: no arrow.
    let c = build(
        df,
        &BuildOptions {
            platform: ("linux".into(), "amd64".into()),
            prefix_platform: true,
            ..opts()
        },
    );
    assert!(
        step_names(&c).contains(&"[linux/amd64 build 3/4] RUN make"),
        "{:?}",
        step_names(&c)
    );
}

#[test]
fn target_arrows_normalize_as_containerd() {
    let amd = Platform::new("linux", "amd64");
    let arrow = |t: Option<Platform>| config::arrow_to_target(&amd, t);
    assert_eq!(arrow(None), "");
    assert_eq!(arrow(Platform::parse("linux/x86_64")), "");
    assert_eq!(arrow(Platform::parse("linux/aarch64/v8")), "->arm64");
    assert_eq!(arrow(Platform::parse("linux/arm")), "->arm/v7");
    assert_eq!(
        arrow(Some(Platform {
            os: String::new(),
            arch: "arm64".into(),
            variant: String::new()
        })),
        "->arm64"
    );
    assert_eq!(arrow(Platform::parse("darwin/amd64")), "->darwin/amd64");
}

#[test]
fn arg_scoping() {
    let df = "ARG GLOBAL=g\nARG BOTH=outer\nFROM busybox\nRUN echo 1\nARG GLOBAL\nARG BOTH=inner\nARG LATE\nRUN echo 2\nFROM busybox\nRUN echo 3\n";
    let mut o = opts();
    o.target = None;
    // The first stage is not the target: make it one through COPY --from.
    let df = format!("{df}COPY --from=0 /x /x\n");
    let c = build(&df, &o);
    let metas = exec_metas(&c);
    let by_cmd = |cmd: &str| {
        metas
            .iter()
            .find(|m| m.args.last().map(String::as_str) == Some(cmd))
            .cloned()
            .unwrap_or_default()
    };
    // A global ARG is not visible in a stage until redeclared there.
    let first = by_cmd("echo 1");
    assert_eq!(env_of(&first, "GLOBAL"), None);
    let second = by_cmd("echo 2");
    assert_eq!(env_of(&second, "GLOBAL").as_deref(), Some("g"));
    assert_eq!(env_of(&second, "BOTH").as_deref(), Some("inner"));
    // Declared without a value anywhere: not in the environment.
    assert_eq!(env_of(&second, "LATE"), None);
    // Stage ARGs do not leak into the next stage.
    let third = by_cmd("echo 3");
    assert_eq!(env_of(&third, "GLOBAL"), None);
    assert_eq!(env_of(&third, "BOTH"), None);
}

#[test]
fn build_args_override_defaults_and_platform_args_need_declaring() {
    let mut o = opts();
    o.build_args.insert("V".into(), "override".into());
    o.platform = ("linux".into(), "arm/v7".into());
    let c = build(
        "FROM busybox\nRUN echo before\nARG V=default\nARG TARGETPLATFORM\nARG TARGETVARIANT\nRUN echo after\n",
        &o,
    );
    let metas = exec_metas(&c);
    assert_eq!(env_of(&metas[0], "TARGETPLATFORM"), None);
    assert_eq!(env_of(&metas[1], "V").as_deref(), Some("override"));
    assert_eq!(
        env_of(&metas[1], "TARGETPLATFORM").as_deref(),
        Some("linux/arm/v7")
    );
    assert_eq!(env_of(&metas[1], "TARGETVARIANT").as_deref(), Some("v7"));
    assert_eq!(c.image_config.architecture().to_string(), "arm");
    assert_eq!(c.image_config.variant().as_deref(), Some("v7"));
    // ARGs never reach the image's env.
    let env = c
        .image_config
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    assert!(!env.iter().any(|e| e.starts_with("V=")), "{env:?}");
}

#[test]
fn global_args_expand_in_from() {
    let resolver = Resolver::default();
    let mut o = opts();
    o.build_args.insert("TAG".into(), "1.36".into());
    let r = compile(
        "ARG NAME=busybox\nARG TAG=latest\nFROM ${NAME}:${TAG}\n",
        &o,
        &resolver,
    );
    assert!(r.is_ok(), "{:?}", r.err());
    assert_eq!(
        *resolver.calls.lock().unwrap_or_else(|e| e.into_inner()),
        vec!["busybox:1.36"]
    );
}

#[test]
fn entrypoint_resets_inherited_cmd_but_not_its_own() {
    let mut base = ImageConfiguration::default();
    let mut cfg = oci_spec::image::Config::default();
    cfg.set_cmd(Some(vec!["sh".into()]));
    base.set_config(Some(cfg));
    let resolver = Resolver {
        config: Some(base),
        ..Default::default()
    };
    let cmd_of = |df: &str| {
        let c = compile(df, &opts(), &resolver).map_err(|e| e.to_string())?;
        Ok::<_, String>(
            c.image_config
                .config()
                .as_ref()
                .and_then(|c| c.cmd().clone()),
        )
    };
    assert_eq!(cmd_of("FROM busybox\nENTRYPOINT [\"app\"]\n"), Ok(None));
    assert_eq!(
        cmd_of("FROM busybox\nCMD [\"x\"]\nENTRYPOINT [\"app\"]\n"),
        Ok(Some(vec!["x".to_string()]))
    );
    // A CMD set by a parent stage of the same Dockerfile is inherited, as from an image: BuildKit
    // clones only the stage's image config, not its `cmdSet`.
    assert_eq!(
        cmd_of("FROM busybox AS a\nCMD [\"y\"]\nFROM a\nENTRYPOINT [\"app\"]\n"),
        Ok(None)
    );
    assert_eq!(
        cmd_of("FROM busybox\nCMD [\"x\"]\n"),
        Ok(Some(vec!["x".to_string()]))
    );
}

#[test]
fn from_stage_inherits_state_and_config() {
    let c = build(
        "FROM busybox AS a\nENV X=1\nWORKDIR /w\nUSER u\nFROM a\nRUN pwd\n",
        &opts(),
    );
    let metas = exec_metas(&c);
    assert_eq!(metas.len(), 1);
    assert_eq!(metas[0].cwd, "/w");
    assert_eq!(metas[0].user, "u");
    assert_eq!(env_of(&metas[0], "X").as_deref(), Some("1"));
    // The RUN runs on top of the WORKDIR mkdir of stage `a`.
    let run = c
        .definition
        .ops
        .last()
        .map(|op| op.inputs.clone())
        .unwrap_or_default();
    let mkdir = c
        .definition
        .ops
        .iter()
        .find(|op| matches!(&op.kind, Some(op::Kind::File(_))));
    assert_eq!(
        run.first().map(|i| i.digest.clone()),
        mkdir.map(|m| m.digest())
    );
}

#[test]
fn did_you_mean_for_stages_and_flags() {
    let err = |df: &str| match compile(df, &opts(), &Resolver::default()) {
        Ok(_) => panic!("expected an error for {df}"),
        Err(e) => e.to_string(),
    };
    let e = err("FROM busybox AS builder\nFROM busybox\nCOPY --from=buidler /a /a\n");
    assert!(e.contains("did you mean `builder`?"), "{e}");
    assert!(e.starts_with("Dockerfile:3:"), "{e}");
    let e = err("FROM busybox\nRUN --netwrok=none true\n");
    assert!(e.contains("did you mean `network`?"), "{e}");
}

#[test]
fn env_without_value_is_an_error_with_a_fix() {
    let df = crate::Dockerfile {
        directives: vec![],
        escape: '\\',
        warnings: vec![],
        instructions: vec![
            instr("from", &["scratch"], 1),
            instr("env", &["KEY", "", ""], 2),
        ],
    };
    let o = opts();
    let r = Compiler::new(&df, &o, &Resolver::default()).and_then(|c| c.run());
    match r {
        Err(FrontendError::Instruction { line, message, .. }) => {
            assert_eq!(line, 2);
            assert!(message.contains("`ENV KEY=value`"), "{message}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("ENV without a value compiled"),
    }
}

fn instr(name: &str, args: &[&str], line: usize) -> Instruction {
    Instruction {
        name: name.into(),
        original: format!("{} {}", name.to_ascii_uppercase(), args.join(" ")),
        flags: vec![],
        args: args.iter().map(|a| a.to_string()).collect(),
        json: false,
        heredocs: vec![],
        start_line: line,
        end_line: line,
        next: None,
    }
}

#[test]
fn no_cache_marks_every_op() {
    let mut o = opts();
    o.no_cache = true;
    let c = build("FROM busybox\nCOPY a /a\nRUN true\n", &o);
    assert!(c.definition.metadata.iter().all(|m| m.ignore_cache));
}

#[test]
fn base_image_onbuild_triggers_run_first_and_are_cleared() {
    let raw = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "OnBuild": ["RUN echo from-trigger", "ENV TRIGGERED=yes"],
            "Shell": ["/bin/ash", "-c"],
            "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Retries": 2}
        },
        "rootfs": {"type": "layers", "diff_ids": []}
    });
    let resolver = Resolver {
        config: serde_json::from_value(raw.clone()).ok(),
        raw,
        ..Default::default()
    };
    let c = match compile("FROM base\nRUN echo child $TRIGGERED\n", &opts(), &resolver) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let metas = exec_metas(&c);
    let args: Vec<String> = metas.iter().map(|m| m.args.join(" ")).collect();
    // The inherited SHELL applies to the triggers and the child's own RUN.
    assert_eq!(
        args,
        vec![
            "/bin/ash -c echo from-trigger",
            "/bin/ash -c echo child $TRIGGERED"
        ]
    );
    assert_eq!(env_of(&metas[1], "TRIGGERED").as_deref(), Some("yes"));
    assert!(
        !c.config_extras.contains_key("OnBuild"),
        "{:?}",
        c.config_extras
    );
    assert_eq!(
        c.config_extras["Shell"],
        serde_json::json!(["/bin/ash", "-c"])
    );
    assert_eq!(
        c.config_extras["Healthcheck"],
        serde_json::json!({"Test": ["CMD-SHELL", "true"], "Retries": 2})
    );
    let names: Vec<&str> = c
        .definition
        .metadata
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    // BuildKit adds every trigger to the step total (the ENV too) before naming the FROM step.
    assert!(
        names.contains(&"[2/4] ONBUILD RUN echo from-trigger")
            && names.iter().any(|n| n.starts_with("[1/4] FROM base@")),
        "{names:?}"
    );
}

#[test]
fn named_context_base_image_skipped_its_onbuild_triggers() {
    let resolver = Resolver {
        raw: serde_json::json!({"config": {"OnBuild": ["RUN echo from-trigger"]}}),
        ..Default::default()
    };
    let mut o = opts();
    o.named_contexts.insert(
        "base".into(),
        crate::NamedContext::Image("example.com/base:1".into()),
    );
    let c = match compile("FROM base\nRUN echo mine\n", &o, &resolver) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let args: Vec<String> = exec_metas(&c).iter().map(|m| m.args.join(" ")).collect();
    assert_eq!(
        args,
        vec!["/bin/sh -c echo from-trigger", "/bin/sh -c echo mine"]
    );
    assert!(!c.config_extras.contains_key("OnBuild"));
}

#[test]
fn bad_onbuild_trigger_names_the_from_line() {
    let raw = serde_json::json!({"config": {"OnBuild": ["RUNN oops"]}});
    let resolver = Resolver {
        raw,
        ..Default::default()
    };
    let err = match compile("FROM base\n", &opts(), &resolver) {
        Ok(_) => panic!("a bad trigger compiled"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with("Dockerfile:1: "), "{err}");
    assert!(err.contains("ONBUILD"), "{err}");
}

#[test]
fn onbuild_of_an_earlier_stage_runs_in_the_child_and_goes_no_further() {
    let c = build(
        "FROM busybox AS base\nONBUILD RUN echo later\nFROM base\nRUN echo mine\n",
        &opts(),
    );
    let args: Vec<String> = exec_metas(&c).iter().map(|m| m.args.join(" ")).collect();
    assert_eq!(args, vec!["/bin/sh -c echo later", "/bin/sh -c echo mine"]);
    assert_eq!(c.config_extras.get("OnBuild"), None);
}

fn undefined_vars(df: &str, config_env: &[&str]) -> Vec<(usize, String)> {
    let mut config = ImageConfiguration::default();
    let mut c = oci_spec::image::Config::default();
    c.set_env(Some(config_env.iter().map(|e| e.to_string()).collect()));
    config.set_config(Some(c));
    let resolver = Resolver {
        config: Some(config),
        ..Default::default()
    };
    let compiled = match compile(df, &opts(), &resolver) {
        Ok(c) => c,
        Err(e) => panic!("compile failed: {e}"),
    };
    compiled
        .warnings
        .into_iter()
        .filter(|w| w.message.starts_with("UndefinedVar"))
        .map(|w| (w.line, w.message))
        .collect()
}

#[test]
fn undefined_vars_are_reported_outside_run_with_a_close_name() {
    let got = undefined_vars(
        "FROM busybox\nARG VERSION\nARG EMPTY\nENV APP_HOME=/app\n\
         RUN echo $NOPE ${ALSO_NOPE}\n\
         WORKDIR $APP_HOM\n\
         COPY --chown=${OWNER:-root} src/$VERSOIN/ $APP_HOME/$EMPTY\n\
         LABEL v=$VERSION path=$PATH base=$BASE_ONLY\n\
         USER ${TARGETARCH}\n\
         RUN --mount=type=cache,target=/c$NOT_CHECKED true\n\
         ENV X=\\$ESCAPED Y='$SINGLE'\n",
        &["PATH=/bin", "BASE_ONLY=1"],
    );
    assert_eq!(
        got,
        vec![
            (
                6,
                "UndefinedVar: Usage of undefined variable '$APP_HOM' (did you mean $APP_HOME?)"
                    .to_string()
            ),
            (
                7,
                "UndefinedVar: Usage of undefined variable '$OWNER'".to_string()
            ),
            (
                7,
                "UndefinedVar: Usage of undefined variable '$VERSOIN' (did you mean $VERSION?)"
                    .to_string()
            ),
            (
                9,
                "UndefinedVar: Usage of undefined variable '$TARGETARCH'".to_string()
            ),
        ]
    );
}

#[test]
fn undefined_var_check_can_be_skipped() {
    let df = "# check=skip=UndefinedVar\nFROM busybox\nWORKDIR /$NOPE\n";
    assert!(undefined_vars(df, &[]).is_empty());
    let err = compile(
        "# check=error=true\nFROM busybox\nWORKDIR /$NOPE\n",
        &opts(),
        &Resolver::default(),
    )
    .map(|_| ())
    .expect_err("an UndefinedVar finding fails the build under error=true");
    assert!(
        err.to_string()
            .contains("Dockerfile:3: UndefinedVar: Usage of undefined variable '$NOPE'"),
        "{err}"
    );
}

#[test]
fn duplicate_stage_names_warn_and_resolve_as_buildkit() {
    // BuildKit builds this with a DuplicateStageName warning: `FROM dup` takes the latest
    // `dup` before it, `COPY --from=dup` and `--target dup` the last one in the file.
    let df = "FROM busybox AS dup\nRUN echo first\n\
              FROM dup AS mid\nRUN echo mid\n\
              FROM busybox AS dup\nRUN echo second\n\
              FROM busybox\nCOPY --from=dup /a /a\n";
    let c = build(df, &opts());
    let json = c.definition.to_json().to_string();
    assert!(json.contains("echo second"), "{json}");
    assert!(!json.contains("echo first"), "{json}");
    assert_eq!(
        c.warnings
            .iter()
            .filter(|w| w.message.starts_with("DuplicateStageName"))
            .map(|w| (w.line, w.message.as_str()))
            .collect::<Vec<_>>(),
        vec![(
            5,
            "DuplicateStageName: Duplicate stage name \"dup\", stage names should be unique"
        )]
    );
    let o = BuildOptions {
        target: Some("mid".into()),
        ..opts()
    };
    let json = build(df, &o).definition.to_json().to_string();
    assert!(
        json.contains("echo first") && !json.contains("echo second"),
        "{json}"
    );
    let o = BuildOptions {
        target: Some("dup".into()),
        ..opts()
    };
    let json = build(df, &o).definition.to_json().to_string();
    assert!(
        json.contains("echo second") && !json.contains("echo first"),
        "{json}"
    );
}

#[test]
fn each_needed_run_is_reported_with_its_stage_platform() {
    let df = "FROM --platform=linux/amd64 scratch AS tools\nRUN make\n\
              FROM scratch AS unused\nRUN never\n\
              FROM scratch\nCOPY --from=tools /x /x\nRUN check\n";
    let o = BuildOptions {
        platform: ("linux".into(), "arm64".into()),
        ..opts()
    };
    assert_eq!(
        build(df, &o).runs,
        vec![
            RunStep {
                line: 2,
                platform: "linux/amd64".into()
            },
            RunStep {
                line: 7,
                platform: "linux/arm64".into()
            },
        ]
    );
}
