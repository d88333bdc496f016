//! `kiln debug`: what the frontend makes of a Dockerfile, without building it. `parse` dumps the
//! syntax tree in the moby corpus format; `llb` compiles the build graph with an offline image
//! resolver (no store, no network: image names are normalised but not pinned to a digest, and
//! base images contribute no config), so the output depends only on the Dockerfile, the context's
//! `.dockerignore` and the flags. `llb` with the engine ([`debug_llb_resolved`]) resolves base
//! images as a build does instead, so their config, ENV and ONBUILD triggers show in the graph.

use crate::{context, BuildRequest};
use anyhow::{Context, Result};
use kiln_registry::Reference;
use std::path::Path;

/// The parsed Dockerfile at `path`, one instruction a line in the moby parser corpus format.
/// Parser warnings go to the second element, as `NAME:LINE: message`.
pub fn debug_parse(path: &Path) -> Result<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read `{}`: pass the Dockerfile with `-f`",
            path.display()
        )
    })?;
    let name = context::dockerfile_name(path);
    let df = kiln_frontend::parse(&text).map_err(|e| {
        // The parser says `Dockerfile:LINE`; name the file that was actually read.
        anyhow::anyhow!("{name}:{}: {}", e.line, e.message)
    })?;
    let warnings = df
        .warnings
        .iter()
        .map(|(line, message)| format!("{name}:{line}: {message}"))
        .collect();
    Ok((df.dump(), warnings))
}

/// The compiled build graph of a build request as JSON: the definition (`ops`, `root`), the image
/// config (`image_config`, with the fields oci-spec lacks in `config_extras`) and `warnings`.
pub fn debug_llb(req: &BuildRequest) -> Result<serde_json::Value> {
    let platform = kiln_registry::Platform::host();
    llb_json(
        req,
        (platform.os.clone(), platform.architecture.clone()),
        &OfflineResolver,
    )
}

/// [`debug_llb`] with base images resolved as `kiln build` resolves them: from the engine's store
/// (the registry with `req.pull`, or when the store lacks them), for the build's platform. Base
/// image digests, configs and ONBUILD triggers are in the output, which therefore depends on the
/// store and the registry.
pub async fn debug_llb_resolved(
    engine: &crate::Engine,
    req: &BuildRequest,
) -> Result<serde_json::Value> {
    let platform = context::build_platform(req.platform.as_deref(), engine.solver.platform())?;
    let frontend_platform = context::frontend_platform(&platform);
    let resolver = context::StoreResolver::new(
        engine.solver.clone(),
        tokio::runtime::Handle::current(),
        platform,
        req.pull,
    );
    let req = req.clone();
    // The resolver waits on the runtime: compile on a blocking thread, as a build does.
    tokio::task::spawn_blocking(move || llb_json(&req, frontend_platform, &resolver)).await?
}

fn llb_json(
    req: &BuildRequest,
    platform: (String, String),
    resolver: &dyn kiln_frontend::ImageResolver,
) -> Result<serde_json::Value> {
    let context_dir = context::context_dir(req)?;
    let (dockerfile, text) = context::read_dockerfile(req, &context_dir)?;
    let dockerfile_name = context::dockerfile_name(&dockerfile);
    let ignore_patterns = context::read_dockerignore(&context_dir, &req.context, &dockerfile)?;
    let named = context::named_contexts(&req.build_contexts)?;
    let opts = kiln_frontend::BuildOptions {
        dockerfile_name: dockerfile_name.clone(),
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        platform,
        context_name: "context".into(),
        exclude_patterns: ignore_patterns,
        no_cache: req.no_cache,
        named_contexts: named.contexts,
    };
    let compiled = kiln_frontend::compile(&text, &opts, resolver)?;
    let warnings: Vec<String> = compiled
        .warnings
        .iter()
        .map(|w| format!("{dockerfile_name}:{}: {}", w.line, w.message))
        .collect();
    let mut doc = compiled.definition.to_json();
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(
            "image_config".into(),
            serde_json::to_value(&compiled.image_config)?,
        );
        obj.insert(
            "config_extras".into(),
            serde_json::Value::Object(compiled.config_extras),
        );
        obj.insert("warnings".into(), serde_json::Value::from(warnings));
    }
    Ok(doc)
}

/// Names images without looking them up: `busybox` → `docker.io/library/busybox:latest`, with an
/// empty config.
struct OfflineResolver;

impl kiln_frontend::ImageResolver for OfflineResolver {
    fn resolve(&self, reference: &str) -> Result<kiln_frontend::ResolvedImage, String> {
        let name = Reference::parse(reference)
            .map_err(|e| format!("`{reference}` is not a valid image name: {e}"))?
            .full_name();
        Ok(kiln_frontend::ResolvedImage {
            reference: name,
            config: oci_spec::image::ImageConfiguration::default(),
            raw_config: serde_json::Value::Null,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llb_of_a_small_build_is_offline_and_stable() {
        let dir = std::env::temp_dir().join(format!("kiln-debug-llb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM busybox\nMAINTAINER me\nRUN echo hi\n",
        )
        .unwrap();
        let req = BuildRequest {
            context: dir.clone(),
            ..Default::default()
        };
        let a = debug_llb(&req).unwrap();
        let b = debug_llb(&req).unwrap();
        assert_eq!(a, b);
        let text = a.to_string();
        assert!(
            text.contains("docker-image://docker.io/library/busybox:latest"),
            "{text}"
        );
        assert!(text.contains("MAINTAINER"), "warnings are included: {text}");
        let (dump, _) = debug_parse(&dir.join("Dockerfile")).unwrap();
        assert_eq!(
            dump,
            "(from \"busybox\")\n(maintainer \"me\")\n(run \"echo hi\")\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
