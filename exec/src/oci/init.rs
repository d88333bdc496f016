//! The init of a container run by an external OCI runtime, so that the command is not pid 1
//! there either: Docker's `--init` answer, a static `tini` bind-mounted read-only into the
//! container as the process, with the command as its argument.
//!
//! tini, as pid 1, reaps orphaned zombies, forwards signals to the command, exits with the
//! command's code (128 + signal when killed), and its exit takes every other process of the pid
//! namespace down with it, as the built-in init does. It is started without `-g`: the built-in
//! init forwards signals to the command alone, not to its process group. A missing command
//! exits 127 with tini's `exec ... failed: No such file or directory`, as `docker run --init`.
//!
//! The binary is mounted at [`INIT_PATH`], inside the `/dev` tmpfs, so that neither it nor its
//! mount point can land in a layer.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder, Spec};

use crate::ExecError;

/// Where the init is mounted in the container (`/proc/1/comm` reads `init`).
pub(crate) const INIT_PATH: &str = "/dev/init";

/// Environment variable naming the static init binary to use instead of the one found in PATH.
pub(crate) const INIT_ENV: &str = "KILN_INIT";

/// Static init binaries, by preference: Debian's `tini` package, Docker's packages.
const CANDIDATES: [&str; 2] = ["tini-static", "docker-init"];

/// Directories searched after PATH: a daemon's PATH may be minimal.
const EXTRA_DIRS: [&str; 3] = ["/usr/bin", "/usr/local/bin", "/usr/libexec/docker"];

/// The static init binary on the host: `KILN_INIT`, else the first candidate in PATH or the
/// usual directories.
pub(crate) fn find(runtime: &str) -> Result<PathBuf, ExecError> {
    if let Some(p) = std::env::var_os(INIT_ENV) {
        let p = PathBuf::from(p);
        if is_executable_file(&p) {
            return Ok(p);
        }
        return Err(ExecError::Runtime {
            runtime: runtime.to_string(),
            message: format!(
                "`{INIT_ENV}` is `{}`, which is not an executable file; point it at a static init such as `/usr/bin/tini-static`",
                p.display()
            ),
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .collect();
    find_in(&dirs).ok_or_else(|| ExecError::Runtime {
        runtime: runtime.to_string(),
        message: format!(
            "no container init found (`{}` in PATH): the command must not run as pid 1; install it (`apt-get install tini`), set `{INIT_ENV}` to a static init binary, or leave `--runtime` out to use the built-in sandbox",
            CANDIDATES.join("` or `")
        ),
    })
}

fn find_in(dirs: &[PathBuf]) -> Option<PathBuf> {
    CANDIDATES.iter().find_map(|name| {
        dirs.iter()
            .map(|d| d.join(name))
            .find(|p| is_executable_file(p))
    })
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0)
}

/// The read-only bind mount of `binary` at [`INIT_PATH`].
pub(crate) fn mount(binary: &Path) -> Result<Mount, ExecError> {
    MountBuilder::default()
        .destination(PathBuf::from(INIT_PATH))
        .typ("bind".to_string())
        .source(binary.to_path_buf())
        .options(
            ["bind", "ro", "nosuid", "nodev"]
                .iter()
                .map(|o| o.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(ExecError::Spec)
}

/// Make the spec's process `INIT_PATH -- ARGS...`; the rest of the process (user, env, cwd,
/// capabilities) applies to the init and, through it, to the command.
pub(crate) fn wrap(spec: &mut Spec) {
    let Some(mut process) = spec.process().clone() else {
        return;
    };
    let mut args = vec![INIT_PATH.to_string(), "--".to_string()];
    args.extend(process.args().iter().flatten().cloned());
    process.set_args(Some(args));
    spec.set_process(Some(process));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tini_static_is_preferred_and_must_be_executable() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(name);
            std::fs::write(&p, b"\x7fELF").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let dirs = vec![dir.path().to_path_buf()];
        assert_eq!(find_in(&dirs), None);
        write("tini-static", 0o644);
        assert_eq!(find_in(&dirs), None, "not executable");
        write("docker-init", 0o755);
        assert_eq!(find_in(&dirs), Some(dir.path().join("docker-init")));
        write("tini-static", 0o755);
        assert_eq!(find_in(&dirs), Some(dir.path().join("tini-static")));
    }

    #[test]
    fn the_command_becomes_the_inits_argument() {
        let mut spec = crate::default_spec(&crate::ProcessSpec {
            args: vec!["sh".into(), "-c".into(), "echo --".into()],
            env: vec![],
            cwd: "/".into(),
            user: crate::ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                home: "/root".into(),
            },
            hostname: "box".into(),
            network: crate::Network::Host,
            terminal: false,
        })
        .unwrap();
        wrap(&mut spec);
        let args = spec.process().as_ref().unwrap().args().clone().unwrap();
        assert_eq!(args, ["/dev/init", "--", "sh", "-c", "echo --"]);
        let m = mount(Path::new("/usr/bin/tini-static")).unwrap();
        assert_eq!(m.destination(), Path::new("/dev/init"));
        assert!(m.options().as_ref().unwrap().contains(&"ro".to_string()));
    }
}
