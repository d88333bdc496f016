//! The `kiln` command.
fn main() {
    kiln_exec::sandbox_main_if_requested();
}
