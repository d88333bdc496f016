//! kiln-registry: see ../../DESIGN.md (shared) for this crate's job.
