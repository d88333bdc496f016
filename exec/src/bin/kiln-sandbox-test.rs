//! Minimal host for the sandbox helper, used by kiln-exec's integration tests as `KILN_SANDBOX_EXE`.

fn main() {
    kiln_exec::sandbox_main_if_requested();
    eprintln!("kiln-sandbox-test: only the `__kiln-sandbox` mode exists; this binary is for kiln-exec's tests");
    std::process::exit(2);
}
