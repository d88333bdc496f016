//! `kiln debug`: what the frontend makes of a Dockerfile, without building it. `parse` dumps the
//! syntax tree in the moby corpus format; `llb` compiles the build graph with an offline image
//! resolver (no store, no network: image names are normalised but not pinned to a digest, and
//! base images contribute no config), so the output depends only on the Dockerfile, the context's
//! `.dockerignore` and the flags. `llb` with the engine ([`debug_llb_resolved`]) resolves base
//! images as a build does instead, so their config, ENV and ONBUILD triggers show in the graph.

use crate::{context, platforms, BuildRequest};
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
/// With several `--platform`s, the one graph a build solves (each shared op once, names
/// prefixed with their stage's platform) and, under `platforms`, each platform's `root`,
/// `image_config` and `config_extras`.
pub fn debug_llb(req: &BuildRequest) -> Result<serde_json::Value> {
    let platforms =
        platforms::target_platforms(req.platform.as_deref(), &kiln_registry::Platform::host())?;
    llb_json(req, &platforms, |_| OfflineResolver)
}

/// [`debug_llb`] with base images resolved as `kiln build` resolves them: from the engine's store
/// (the registry with `req.pull`, or when the store lacks them), for the build's platforms. Base
/// image digests, configs and ONBUILD triggers are in the output, which therefore depends on the
/// store and the registry.
pub async fn debug_llb_resolved(
    engine: &crate::Engine,
    req: &BuildRequest,
) -> Result<serde_json::Value> {
    let platforms = platforms::target_platforms(req.platform.as_deref(), engine.solver.platform())?;
    let resolver = context::StoreResolver::new(
        engine.solver.clone(),
        tokio::runtime::Handle::current(),
        platforms[0].clone(),
        req.pull,
    );
    let req = req.clone();
    // The resolver waits on the runtime: compile on a blocking thread, as a build does.
    tokio::task::spawn_blocking(move || {
        llb_json(&req, &platforms, |p| resolver.for_platform(p.clone()))
    })
    .await?
}

fn llb_json<R: kiln_frontend::ImageResolver>(
    req: &BuildRequest,
    platforms: &[kiln_registry::Platform],
    resolver_for: impl Fn(&kiln_registry::Platform) -> R,
) -> Result<serde_json::Value> {
    let context_dir = context::context_dir(req)?;
    let (dockerfile, text) = context::read_dockerfile(req, &context_dir)?;
    let dockerfile_name = context::dockerfile_name(&dockerfile);
    let ignore_patterns = context::read_dockerignore(&context_dir, &req.context, &dockerfile)?;
    let named = context::named_contexts(&req.build_contexts, &req.context_fingerprints)?;
    let mut warnings: Vec<String> = Vec::new();
    let mut graphs = Vec::with_capacity(platforms.len());
    let mut images = Vec::with_capacity(platforms.len());
    for platform in platforms {
        let opts = kiln_frontend::BuildOptions {
            dockerfile_name: dockerfile_name.clone(),
            build_args: req.build_args.clone(),
            target: req.target.clone(),
            platform: context::frontend_platform(platform),
            context_name: "context".into(),
            exclude_patterns: ignore_patterns.clone(),
            no_cache: req.no_cache,
            named_contexts: named.contexts.clone(),
            prefix_platform: platforms.len() > 1,
        };
        let compiled = kiln_frontend::compile(&text, &opts, &resolver_for(platform))?;
        for w in &compiled.warnings {
            let w = format!("{dockerfile_name}:{}: {}", w.line, w.message);
            // Every platform's compile warns about the same lines.
            if !warnings.contains(&w) {
                warnings.push(w);
            }
        }
        graphs.push((platform.clone(), compiled.definition));
        images.push((
            platform.to_string(),
            serde_json::to_value(&compiled.image_config)?,
            serde_json::Value::Object(compiled.config_extras),
        ));
    }
    let (definition, roots) = platforms::merge_graphs(graphs);
    let mut doc = definition.to_json();
    if let Some(obj) = doc.as_object_mut() {
        if let [(_, config, extras)] = images.as_slice() {
            obj.insert("image_config".into(), config.clone());
            obj.insert("config_extras".into(), extras.clone());
        } else {
            let each: Vec<serde_json::Value> = images
                .into_iter()
                .zip(roots)
                .map(|((platform, config, extras), root)| {
                    serde_json::json!({
                        "platform": platform,
                        "root": root,
                        "image_config": config,
                        "config_extras": extras,
                    })
                })
                .collect();
            obj.insert("platforms".into(), serde_json::Value::from(each));
        }
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
