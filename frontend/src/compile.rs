//! AST → LLB compilation (placeholder so the crate builds; the compile engineer replaces it).

use crate::ast::Dockerfile;
use crate::FrontendError;

/// Build options (placeholder).
#[derive(Clone, Debug, Default)]
pub struct BuildOptions;

/// Result of compilation (placeholder).
#[derive(Clone, Debug, Default)]
pub struct Compiled;

/// A base image's resolved config (placeholder).
#[derive(Clone, Debug, Default)]
pub struct ResolvedImage;

/// A compile warning (placeholder).
#[derive(Clone, Debug, Default)]
pub struct Warning;

/// Resolves base images (placeholder).
pub trait ImageResolver {}

/// Compiles a Dockerfile (placeholder).
pub fn compile(df: &Dockerfile, opts: &BuildOptions) -> Result<Compiled, FrontendError> {
    let _ = (df, opts);
    Err(FrontendError::Other("compile is not written yet".into()))
}
