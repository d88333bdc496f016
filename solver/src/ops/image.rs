//! `docker-image://REF` sources: the image is resolved (the local store first, else the
//! registry), its layers fetched and unpacked once per chain ID (`crate::images`); the result
//! is the top layer's snapshot, shared with every other build of the image.

use super::{Inputs, Operation};
use crate::{images, Output, SolveError, VertexTask};
use futures::future::{BoxFuture, FutureExt};

/// The reference, without its `docker-image://`.
pub(super) struct Image<'a>(pub &'a str);

impl Operation for Image<'_> {
    fn execute<'a>(
        &'a self,
        v: &'a VertexTask,
        _inputs: &'a Inputs,
    ) -> BoxFuture<'a, Result<Output, SolveError>> {
        async move {
            let inner = &v.solver.inner;
            let image = images::resolve_image(
                &inner.store,
                &inner.registry,
                &inner.platform,
                self.0,
                false,
            )
            .await?;
            images::ensure_layers(&inner.store, &inner.registry, &image).await?;
            let store = inner.store.clone();
            let top = tokio::task::spawn_blocking(move || images::unpack(&store, &image))
                .await
                .map_err(SolveError::from)??;
            Ok(top.map_or(Output::Scratch, Output::Snapshot))
        }
        .boxed()
    }
}
