//! kiln-exporter: see ../../DESIGN.md (shared) for this crate's job.
