//! Incremental construction of a [`Definition`]: ops are deduplicated by digest, so building the
//! same step twice (two stages sharing a base) yields one vertex.

use crate::{Definition, Input, Op, OpDigest, OpMetadata};
use std::collections::HashMap;

/// An output of an op already added to a builder.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OutputRef {
    pub digest: OpDigest,
    pub index: i64,
}

impl OutputRef {
    /// This output as an op input.
    pub fn input(&self) -> Input {
        Input {
            digest: self.digest.clone(),
            index: self.index,
        }
    }
}

#[derive(Default)]
pub struct DefinitionBuilder {
    ops: Vec<Op>,
    metadata: Vec<OpMetadata>,
    index: HashMap<OpDigest, usize>,
}

impl DefinitionBuilder {
    /// Adds an op (whose inputs must already be added) and returns its output 0.
    pub fn add(&mut self, op: Op, mut meta: OpMetadata) -> OutputRef {
        let digest = op.digest();
        if !self.index.contains_key(&digest) {
            self.index.insert(digest.clone(), self.ops.len());
            self.ops.push(op);
            meta.digest = digest.clone();
            self.metadata.push(meta);
        }
        OutputRef { digest, index: 0 }
    }

    /// Finishes the definition with `root` as the output to build (`None`: scratch).
    pub fn build(self, root: Option<OutputRef>) -> Definition {
        Definition {
            ops: self.ops,
            metadata: self.metadata,
            root: Some(root.map(|r| r.input()).unwrap_or_default()),
        }
    }
}
