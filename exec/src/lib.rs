//! kiln-exec
pub fn sandbox_main_if_requested() {}
