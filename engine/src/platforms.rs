//! Multi-platform builds (`--platform linux/amd64,linux/arm64`): the list of target platforms,
//! and one graph holding every platform's, so the steps they share (a
//! `FROM --platform=$BUILDPLATFORM` stage) are one vertex and run once.

use anyhow::{bail, Context, Result};
use kiln_llb::{Definition, Input};
use kiln_registry::Platform;
use std::collections::{HashMap, HashSet};

/// The platforms `--platform` names, in order and each once (the host's when none is given).
pub(crate) fn target_platforms(given: Option<&str>, host: &Platform) -> Result<Vec<Platform>> {
    let Some(given) = given else {
        return Ok(vec![host.clone()]);
    };
    let mut out: Vec<Platform> = Vec::new();
    for part in given.split(',').map(str::trim) {
        if part.is_empty() {
            bail!("`kiln build --platform {given}`: an empty platform in the list; write e.g. `linux/amd64,linux/arm64`");
        }
        let p = Platform::parse(part).context("`kiln build --platform`")?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The directory a platform's files go to in a split output (`type=local`), as BuildKit's
/// `platform-split` names it: `linux_amd64`, `linux_arm_v7`.
pub(crate) fn split_dir_name(p: &Platform) -> String {
    p.to_string().replace('/', "_")
}

/// One graph with every platform's ops, each op once, and each platform's root in order. A
/// shared op runs once and keeps the name of its first platform's graph (the frontend already
/// put each stage's platform in its step names, as BuildKit does for several platforms).
pub(crate) fn merge_graphs(graphs: Vec<(Platform, Definition)>) -> (Definition, Vec<Input>) {
    let count = graphs.len();
    let mut merged = Definition::default();
    let mut roots = Vec::with_capacity(count);
    let mut added: HashSet<String> = HashSet::new();
    for (_, def) in graphs {
        roots.push(def.root.clone().unwrap_or_default());
        let mut meta: HashMap<String, kiln_llb::OpMetadata> = def
            .metadata
            .into_iter()
            .map(|m| (m.digest.clone(), m))
            .collect();
        // Each graph lists an op after its inputs, so the concatenation (first copies kept) does
        // too.
        for op in def.ops {
            let d = op.digest();
            if !added.insert(d.clone()) {
                continue;
            }
            if let Some(m) = meta.remove(&d) {
                merged.metadata.push(m);
            }
            merged.ops.push(op);
        }
    }
    merged.root = roots.first().cloned();
    (merged, roots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_llb::{DefinitionBuilder, Op, OpMetadata};

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    fn source(id: &str) -> Op {
        Op {
            inputs: vec![],
            kind: Some(kiln_llb::op::Kind::Source(kiln_llb::SourceOp {
                identifier: id.into(),
                attrs: vec![],
            })),
        }
    }

    #[test]
    fn platform_lists_parse_in_order_without_repeats() {
        let host = p("linux/amd64");
        assert_eq!(target_platforms(None, &host).unwrap(), vec![host.clone()]);
        assert_eq!(
            target_platforms(Some("linux/arm64, linux/amd64,linux/arm64"), &host).unwrap(),
            vec![p("linux/arm64"), p("linux/amd64")]
        );
        let e = format!(
            "{:#}",
            target_platforms(Some("linux/amd64,"), &host).unwrap_err()
        );
        assert!(e.contains("empty platform"), "{e}");
        assert!(target_platforms(Some("linux/amd64,nope"), &host).is_err());
        assert_eq!(split_dir_name(&p("linux/arm/v7")), "linux_arm_v7");
    }

    #[test]
    fn shared_ops_appear_once_and_keep_their_name() {
        let graph = |image: &str, platform: &str| {
            let mut b = DefinitionBuilder::default();
            let shared = b.add(
                source("docker-image://build"),
                OpMetadata {
                    name: "[linux/amd64 build 1/2] FROM build".into(),
                    ..Default::default()
                },
            );
            let own = b.add(
                source(image),
                OpMetadata {
                    name: format!("[{platform} stage-1 1/2] FROM x"),
                    ..Default::default()
                },
            );
            let _ = shared;
            b.build(Some(own))
        };
        let (merged, roots) = merge_graphs(vec![
            (p("linux/amd64"), graph("docker-image://a", "linux/amd64")),
            (p("linux/arm64"), graph("docker-image://b", "linux/arm64")),
        ]);
        assert_eq!(merged.ops.len(), 3);
        assert!(merged.validate().is_ok());
        assert_eq!(roots.len(), 2);
        assert_ne!(roots[0], roots[1]);
        let names: Vec<&str> = merged.metadata.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "[linux/amd64 build 1/2] FROM build",
                "[linux/amd64 stage-1 1/2] FROM x",
                "[linux/arm64 stage-1 1/2] FROM x"
            ]
        );
    }
}
