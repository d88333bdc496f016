//! A `KILN_SANDBOX_EXE` that is not a kiln binary gives a clear error, not a hang or a bogus exit code.
//! (Its own test binary: the variable is process-wide.)

use kiln_exec::{
    default_spec, run, ExecError, Network, ProcessSpec, ResolvedUser, RootFs, SandboxConfig, Stdio,
};

#[tokio::test]
async fn helper_without_sandbox_mode_is_reported() {
    std::env::set_var("KILN_SANDBOX_EXE", "/bin/true");
    let dir = tempfile::tempdir().unwrap();
    let p = ProcessSpec {
        args: vec!["true".into()],
        env: vec![],
        cwd: "/".into(),
        user: ResolvedUser::root(),
        hostname: String::new(),
        network: Network::Host,
        terminal: false,
    };
    let config = SandboxConfig {
        spec: default_spec(&p).unwrap(),
        rootfs: RootFs {
            lower: vec![dir.path().to_path_buf()],
            upper: None,
            work: None,
            target: dir.path().to_path_buf(),
        },
        network: Network::Host,
        stdio: Stdio::Null,
        state_dir: dir.path().join("state"),
        runtime: kiln_exec::Runtime::Builtin,
    };
    match run(config, None).await {
        Err(e @ ExecError::NoResult { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("/bin/true"), "{msg}");
            assert!(msg.contains("sandbox_main_if_requested"), "{msg}");
        }
        other => panic!("expected NoResult, got {other:?}"),
    }
}
