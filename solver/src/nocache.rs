//! `--no-cache-filter STAGE,...`: the steps of the named stages run even when a cached result
//! exists (and, through the solver's "fresh" results, so does every step that uses them).

use kiln_llb::Definition;

/// Marks the steps of `stages` (by the stage names the frontend records in each step's metadata)
/// to ignore the cache. Returns the stages that no step of the build belongs to, in the given
/// order, so the caller can warn about them (a misspelled or unneeded stage).
pub fn ignore_cache_for_stages(def: &mut Definition, stages: &[String]) -> Vec<String> {
    let mut seen = vec![false; stages.len()];
    for m in &mut def.metadata {
        if let Some(i) = stages
            .iter()
            .position(|s| !m.stage.is_empty() && *s == m.stage)
        {
            m.ignore_cache = true;
            seen[i] = true;
        }
    }
    stages
        .iter()
        .zip(seen)
        .filter(|(_, seen)| !seen)
        .map(|(s, _)| s.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_llb::OpMetadata;

    fn meta(stage: &str) -> OpMetadata {
        OpMetadata {
            stage: stage.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_named_stages_ignore_the_cache() {
        let mut def = Definition {
            metadata: vec![meta("build"), meta("test"), meta(""), meta("build")],
            ..Default::default()
        };
        let unknown =
            ignore_cache_for_stages(&mut def, &["build".to_string(), "bulid".to_string()]);
        let flags: Vec<bool> = def.metadata.iter().map(|m| m.ignore_cache).collect();
        assert_eq!(flags, [true, false, false, true]);
        assert_eq!(unknown, ["bulid"]);
    }
}
