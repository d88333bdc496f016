//! kiln-llb: the build graph that the frontend produces and the solver executes.
//!
//! A [`Definition`] is a list of [`Op`]s in dependency order, each identified by the sha256 of its
//! canonical protobuf encoding ([`OpDigest`]). Ops reference their inputs by digest and output
//! index, so equal operations have equal digests everywhere. Human-facing data (step names,
//! Dockerfile lines) lives in [`OpMetadata`] beside the op, outside the digest, so renaming a stage
//! does not invalidate the cache.
//!
//! The schema has no maps: key/value attributes are sorted repeated pairs, which keeps the
//! encoding canonical.

mod builder;
mod ops;

pub use builder::{DefinitionBuilder, OutputRef};
pub use ops::*;

use prost::Message;
use sha2::{Digest as _, Sha256};

/// The content address of an op: `sha256:<hex>` over its canonical encoding.
pub type OpDigest = String;

/// Errors from decoding or validating a definition.
#[derive(Debug, thiserror::Error)]
pub enum LlbError {
    /// The prost error is printed in the text only: as a `source()` too, `{:#}` would print it
    /// twice.
    #[error("cannot decode LLB definition: {0}")]
    Decode(prost::DecodeError),
    #[error("op `{op}` references input `{input}` which is not defined before it")]
    DanglingInput { op: OpDigest, input: OpDigest },
    #[error("definition has no root")]
    NoRoot,
}

impl From<prost::DecodeError> for LlbError {
    fn from(e: prost::DecodeError) -> Self {
        LlbError::Decode(e)
    }
}

impl Op {
    /// The op's canonical encoding.
    pub fn encode_canonical(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// The op's content address.
    pub fn digest(&self) -> OpDigest {
        digest_bytes(&self.encode_canonical())
    }
}

/// `sha256:<hex>` of some bytes.
pub fn digest_bytes(bytes: &[u8]) -> OpDigest {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Definition {
    /// Encodes the whole definition (the wire format between client and engine).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes and validates a definition: every input must refer to an op earlier in the list.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LlbError> {
        let def = Definition::decode(bytes)?;
        def.validate()?;
        Ok(def)
    }

    /// Checks that ops are in dependency order and the root exists.
    pub fn validate(&self) -> Result<(), LlbError> {
        let mut seen = std::collections::HashSet::new();
        for op in &self.ops {
            let d = op.digest();
            for input in &op.inputs {
                if !seen.contains(&input.digest) {
                    return Err(LlbError::DanglingInput {
                        op: d,
                        input: input.digest.clone(),
                    });
                }
            }
            seen.insert(d);
        }
        match &self.root {
            Some(r) if r.digest.is_empty() || seen.contains(&r.digest) => Ok(()),
            _ => Err(LlbError::NoRoot),
        }
    }

    /// The ops with their digests, in dependency order.
    pub fn ops_with_digests(&self) -> Vec<(OpDigest, &Op)> {
        self.ops.iter().map(|op| (op.digest(), op)).collect()
    }

    /// Metadata recorded for an op, if any. A linear search: to look up every op, use
    /// [`Definition::metadata_by_digest`].
    pub fn metadata(&self, digest: &str) -> Option<&OpMetadata> {
        self.metadata.iter().find(|m| m.digest == digest)
    }

    /// Each op's metadata by digest (the first recorded for a digest, as [`Definition::metadata`]
    /// finds it).
    pub fn metadata_by_digest(&self) -> std::collections::HashMap<&str, &OpMetadata> {
        let mut by_digest = std::collections::HashMap::with_capacity(self.metadata.len());
        for m in &self.metadata {
            by_digest.entry(m.digest.as_str()).or_insert(m);
        }
        by_digest
    }

    /// A JSON rendering for `kiln debug llb`: one object per op with its digest, decoded op and
    /// metadata.
    pub fn to_json(&self) -> serde_json::Value {
        let metadata = self.metadata_by_digest();
        let ops: Vec<serde_json::Value> = self
            .ops
            .iter()
            .map(|op| {
                let d = op.digest();
                serde_json::json!({
                    "metadata": metadata.get(d.as_str()),
                    "digest": d,
                    "op": op,
                })
            })
            .collect();
        serde_json::json!({ "ops": ops, "root": self.root })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str) -> Op {
        Op {
            inputs: vec![],
            kind: Some(op::Kind::Source(SourceOp {
                identifier: format!("docker-image://{name}"),
                attrs: vec![],
            })),
        }
    }

    #[test]
    fn equal_ops_have_equal_digests() {
        assert_eq!(image("a").digest(), image("a").digest());
        assert_ne!(image("a").digest(), image("b").digest());
    }

    #[test]
    fn definition_round_trips_and_validates() {
        let mut b = DefinitionBuilder::default();
        let base = b.add(image("busybox"), OpMetadata::default());
        let run = b.add(
            Op {
                inputs: vec![base.input()],
                kind: Some(op::Kind::Exec(ExecOp {
                    meta: Some(ExecMeta {
                        args: vec!["true".into()],
                        ..Default::default()
                    }),
                    mounts: vec![Mount::rootfs(0)],
                    ..Default::default()
                })),
            },
            OpMetadata::default(),
        );
        let def = b.build(Some(run));
        let back = Definition::from_bytes(&def.to_bytes()).unwrap();
        assert_eq!(back, def);
        assert_eq!(back.ops.len(), 2);
    }

    #[test]
    fn dangling_input_is_rejected() {
        let def = Definition {
            ops: vec![Op {
                inputs: vec![Input {
                    digest: "sha256:00".into(),
                    index: 0,
                }],
                kind: None,
            }],
            metadata: vec![],
            root: None,
        };
        assert!(matches!(
            def.validate(),
            Err(LlbError::DanglingInput { .. })
        ));
    }

    #[test]
    fn rendering_100000_ops_takes_linear_time() {
        // Each op looked its metadata up in a list: 100,000 ops took minutes.
        let mut b = DefinitionBuilder::default();
        for i in 0..100_000 {
            b.add(
                image(&format!("i{i}")),
                OpMetadata {
                    name: format!("step {i}"),
                    ..Default::default()
                },
            );
        }
        let def = b.build(None);
        let start = std::time::Instant::now();
        let json = def.to_json();
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
        assert_eq!(json["ops"][99_999]["metadata"]["name"], "step 99999");
    }
}
