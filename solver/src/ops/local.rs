//! `local://NAME` sources: the build context (or a `--build-context` directory), read in place,
//! so there is nothing to run or cache; the steps that read it key on what they select of it.

use super::{Inputs, Operation};
use crate::{Output, SolveError, VertexResult, VertexTask};
use futures::future::{BoxFuture, FutureExt};
use kiln_llb::SourceOp;
use std::sync::Arc;

pub(super) struct Local<'a>(pub &'a SourceOp);

impl Local<'_> {
    fn output(&self, v: &VertexTask) -> Result<Output, SolveError> {
        let name = self
            .0
            .identifier
            .strip_prefix("local://")
            .unwrap_or_default();
        let ctx =
            v.locals.get(name).cloned().ok_or_else(|| {
                SolveError::Op(format!("build context `{name}` was not provided"))
            })?;
        Ok(Output::Local(ctx))
    }
}

impl Operation for Local<'_> {
    fn resolve<'a>(
        &'a self,
        v: &'a VertexTask,
        key: &'a str,
    ) -> Option<BoxFuture<'a, Result<Arc<VertexResult>, SolveError>>> {
        let result = self.output(v).map(|output| {
            Arc::new(VertexResult {
                key: key.to_string(),
                output,
                created_unix: 0,
                fresh: false,
            })
        });
        Some(futures::future::ready(result).boxed())
    }

    fn execute<'a>(
        &'a self,
        v: &'a VertexTask,
        _inputs: &'a Inputs,
    ) -> BoxFuture<'a, Result<Output, SolveError>> {
        futures::future::ready(self.output(v)).boxed()
    }
}
