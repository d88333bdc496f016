//! Running foreign-architecture programs: which binfmt_misc handler (if any) runs a platform's
//! ELF binaries on this host, and registering QEMU's user-mode handlers (`kiln setup emulators`).
//!
//! A handler must have the `F` (fix-binary) flag: the kernel then opens its interpreter once,
//! at registration, so it runs inside a sandbox whose root filesystem has no QEMU. Without `F`
//! the interpreter's path is looked up in the container and the step fails as `no such file`.

use std::path::{Path, PathBuf};

use crate::ExecError;

/// Where the kernel lists binfmt_misc handlers (and takes new ones, through `register`).
pub const BINFMT_MISC_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Where Debian's `qemu-user-static` describes its handlers, one `qemu-ARCH.conf` each.
pub const QEMU_BINFMT_CONF_DIR: &str = "/usr/lib/binfmt.d";

/// The binfmt_misc directory kiln reads: `KILN_BINFMT_MISC_DIR` when set (tests point it at a
/// directory without handlers, since the real one is shared by the whole host), else
/// [`BINFMT_MISC_DIR`].
pub fn binfmt_misc_dir() -> PathBuf {
    std::env::var_os("KILN_BINFMT_MISC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BINFMT_MISC_DIR))
}

/// How this host would run a platform's programs through binfmt_misc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emulation {
    /// An enabled handler with the `F` flag: works in every sandbox.
    Ready {
        /// The handler's name (`qemu-aarch64`).
        handler: String,
        /// The interpreter it runs.
        interpreter: PathBuf,
    },
    /// An enabled handler without the `F` flag: inside a sandbox its interpreter is not found.
    NotFixBinary {
        /// The handler's name.
        handler: String,
    },
    /// No enabled handler matches the platform's ELF header.
    Missing,
    /// kiln does not know the ELF machine of this architecture.
    UnknownArchitecture,
}

/// How a program for GOARCH `architecture` runs through the handlers in `dir`
/// ([`binfmt_misc_dir`] for the host's).
pub fn emulation_for(dir: &Path, architecture: &str) -> Emulation {
    match elf_header(architecture) {
        Some(header) => emulation_among(&read_handlers(dir), &header),
        None => Emulation::UnknownArchitecture,
    }
}

/// The GOARCH architectures (of those kiln knows the ELF machine of) whose programs run in a
/// sandbox through the handlers in `dir`: [`Emulation::Ready`] for each, in kiln's order of
/// architectures. The host's own architecture is among them only if a handler claims it.
pub fn emulated_architectures(dir: &Path) -> Vec<&'static str> {
    let handlers = read_handlers(dir);
    MACHINES
        .iter()
        .filter(|m| {
            matches!(
                emulation_among(&handlers, &m.elf_header()),
                Emulation::Ready { .. }
            )
        })
        .map(|m| m.architecture)
        .collect()
}

/// The handlers listed in `dir`, by name; none when it cannot be read.
fn read_handlers(dir: &Path) -> Vec<(String, Handler)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "register" && n != "status")
        .collect();
    // The kernel tries the most recently registered handler first; a stable order is the best a
    // reader of the directory can do, and two handlers for one machine are rare.
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let text = std::fs::read_to_string(dir.join(&name)).ok()?;
            Some((name, Handler::parse(&text)?))
        })
        .collect()
}

/// How a program starting with `header` runs through `handlers`.
fn emulation_among(handlers: &[(String, Handler)], header: &[u8; 20]) -> Emulation {
    let mut without_f = None;
    for (name, h) in handlers {
        if !h.enabled || !h.matches(header) {
            continue;
        }
        if h.flags.contains('F') {
            return Emulation::Ready {
                handler: name.clone(),
                interpreter: h.interpreter.clone(),
            };
        }
        without_f.get_or_insert_with(|| name.clone());
    }
    match without_f {
        Some(handler) => Emulation::NotFixBinary { handler },
        None => Emulation::Missing,
    }
}

/// An architecture's ELF identity: what binfmt_misc handlers match.
struct Machine {
    /// Its GOARCH name.
    architecture: &'static str,
    /// EI_CLASS: 1 = 32-bit, 2 = 64-bit.
    class: u8,
    /// EI_DATA: 1 = little, 2 = big endian.
    data: u8,
    /// e_machine.
    machine: u16,
}

const fn m(architecture: &'static str, class: u8, data: u8, machine: u16) -> Machine {
    Machine {
        architecture,
        class,
        data,
        machine,
    }
}

/// Every architecture kiln knows the ELF machine of.
const MACHINES: &[Machine] = &[
    m("amd64", 2, 1, 62),
    m("386", 1, 1, 3),
    m("arm64", 2, 1, 183),
    m("arm", 1, 1, 40),
    m("ppc64le", 2, 1, 21),
    m("ppc64", 2, 2, 21),
    m("s390x", 2, 2, 22),
    m("riscv64", 2, 1, 243),
    m("mips64le", 2, 1, 8),
    m("mips64", 2, 2, 8),
    m("mipsle", 1, 1, 8),
    m("mips", 1, 2, 8),
    m("loong64", 2, 1, 258),
];

impl Machine {
    /// The first 20 bytes of an executable ELF file for it (class, byte order, `e_type`,
    /// `e_machine`).
    fn elf_header(&self) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = self.class;
        h[5] = self.data;
        h[6] = 1;
        let (e_type, e_machine) = if self.data == 1 {
            (2u16.to_le_bytes(), self.machine.to_le_bytes())
        } else {
            (2u16.to_be_bytes(), self.machine.to_be_bytes())
        };
        h[16..18].copy_from_slice(&e_type);
        h[18..20].copy_from_slice(&e_machine);
        h
    }
}

/// The first 20 bytes of an executable ELF file for GOARCH `architecture`.
fn elf_header(architecture: &str) -> Option<[u8; 20]> {
    MACHINES
        .iter()
        .find(|m| m.architecture == architecture)
        .map(Machine::elf_header)
}

/// One registered handler, as `/proc/sys/fs/binfmt_misc/NAME` shows it.
#[derive(Debug)]
struct Handler {
    enabled: bool,
    interpreter: PathBuf,
    flags: String,
    offset: usize,
    magic: Vec<u8>,
    mask: Option<Vec<u8>>,
}

impl Handler {
    /// Reads the kernel's listing; `None` for extension handlers and anything unreadable.
    fn parse(text: &str) -> Option<Handler> {
        let mut h = Handler {
            enabled: false,
            interpreter: PathBuf::new(),
            flags: String::new(),
            offset: 0,
            magic: Vec::new(),
            mask: None,
        };
        for line in text.lines() {
            if line == "enabled" {
                h.enabled = true;
            } else if let Some(v) = line.strip_prefix("interpreter ") {
                h.interpreter = PathBuf::from(v);
            } else if let Some(v) = line.strip_prefix("flags:") {
                h.flags = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("offset ") {
                h.offset = v.trim().parse().ok()?;
            } else if let Some(v) = line.strip_prefix("magic ") {
                h.magic = hex_bytes(v.trim())?;
            } else if let Some(v) = line.strip_prefix("mask ") {
                h.mask = Some(hex_bytes(v.trim())?);
            }
        }
        (!h.magic.is_empty()).then_some(h)
    }

    /// Whether a file starting with `header` is handed to this handler. Bytes of the magic
    /// beyond the header cannot be judged and are taken as matching.
    fn matches(&self, header: &[u8]) -> bool {
        self.magic.iter().enumerate().all(|(i, m)| {
            let mask = self.mask.as_ref().and_then(|k| k.get(i)).copied();
            match header.get(self.offset + i) {
                Some(b) => match mask {
                    Some(k) => b & k == m & k,
                    None => b == m,
                },
                None => true,
            }
        })
    }
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// What `kiln setup emulators` did with one handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The handler's name (`qemu-aarch64`).
    pub handler: String,
    /// Its interpreter.
    pub interpreter: PathBuf,
    pub outcome: RegistrationOutcome,
}

/// Whether a handler was registered now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationOutcome {
    /// It was not registered before.
    Registered,
    /// It was registered without the `F` flag, or disabled: replaced.
    Replaced,
    /// It was registered as wanted: left alone.
    AlreadyRegistered,
}

/// Registers every QEMU handler described in `conf_dir` ([`QEMU_BINFMT_CONF_DIR`]) with
/// binfmt_misc at `binfmt_dir` ([`BINFMT_MISC_DIR`]), with the `F` flag, mounting binfmt_misc
/// there first when it is not mounted. Handlers that already have `F` and the same interpreter
/// are left alone, so running it again changes nothing. A handler that would match this host's
/// own programs is never registered.
pub fn register_qemu_handlers(
    conf_dir: &Path,
    binfmt_dir: &Path,
) -> Result<Vec<Registration>, ExecError> {
    let confs = qemu_confs(conf_dir)?;
    if confs.is_empty() {
        return Err(ExecError::Emulation(format!(
            "no QEMU handlers are described in `{}`: install them with `apt-get install \
             qemu-user-static`, then run `kiln setup emulators` again",
            conf_dir.display()
        )));
    }
    let register = binfmt_dir.join("register");
    if !register.exists() {
        nix::mount::mount(
            Some("binfmt_misc"),
            binfmt_dir,
            Some("binfmt_misc"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            ExecError::Emulation(format!(
                "cannot mount binfmt_misc on `{}`: {e}; run `kiln setup emulators` as root \
                 (rootless kiln cannot register emulators)",
                binfmt_dir.display()
            ))
        })?;
    }
    let own = own_header();
    let mut done = Vec::new();
    for conf in confs {
        if own.as_ref().is_some_and(|h| conf.handler.matches(h)) {
            continue;
        }
        let entry = binfmt_dir.join(&conf.name);
        let outcome = match std::fs::read_to_string(&entry)
            .ok()
            .and_then(|t| Handler::parse(&t))
        {
            Some(h) if h.enabled && h.flags.contains('F') && h.interpreter == conf.interpreter => {
                RegistrationOutcome::AlreadyRegistered
            }
            Some(_) => {
                std::fs::write(&entry, "-1")
                    .map_err(|e| write_failed(&entry, "replace", &conf.name, e))?;
                RegistrationOutcome::Replaced
            }
            None => RegistrationOutcome::Registered,
        };
        if outcome != RegistrationOutcome::AlreadyRegistered {
            if !conf.interpreter.exists() {
                return Err(ExecError::Emulation(format!(
                    "`{}` names the interpreter `{}`, which does not exist: reinstall it with \
                     `apt-get install --reinstall qemu-user-static`",
                    conf.path.display(),
                    conf.interpreter.display()
                )));
            }
            std::fs::write(&register, conf.line_with_fix_binary())
                .map_err(|e| write_failed(&register, "register", &conf.name, e))?;
        }
        done.push(Registration {
            handler: conf.name,
            interpreter: conf.interpreter,
            outcome,
        });
    }
    Ok(done)
}

/// A write to binfmt_misc that failed, with what to do when it is a matter of privilege.
fn write_failed(path: &Path, action: &str, handler: &str, e: std::io::Error) -> ExecError {
    let hint = match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            "; only root may change binfmt_misc: run `kiln setup emulators` as root"
        }
        _ => "",
    };
    ExecError::Emulation(format!(
        "cannot {action} the binfmt_misc handler `{handler}` through `{}`: {e}{hint}",
        path.display()
    ))
}

/// The start of this program's own executable: no handler may capture it.
fn own_header() -> Option<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open("/proc/self/exe").ok()?;
    let mut buf = vec![0u8; 20];
    f.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// One `qemu-*.conf` handler description (systemd's binfmt.d format).
struct QemuConf {
    path: PathBuf,
    name: String,
    /// `:name:type:offset:magic:mask:interpreter:` (without its flags).
    fields: Vec<String>,
    delimiter: char,
    flags: String,
    interpreter: PathBuf,
    handler: Handler,
}

impl QemuConf {
    /// The registration line with the `F` flag added to the package's own flags.
    fn line_with_fix_binary(&self) -> String {
        let mut flags = self.flags.clone();
        if !flags.contains('F') {
            flags.push('F');
        }
        let d = self.delimiter.to_string();
        format!("{d}{}{d}{flags}", self.fields.join(&d))
    }
}

/// The `qemu-*.conf` files of `dir`, sorted by name; unreadable lines are skipped.
fn qemu_confs(dir: &Path) -> Result<Vec<QemuConf>, ExecError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => {
            return Err(ExecError::Io {
                what: "cannot read",
                path: dir.to_path_buf(),
                cause: source,
            })
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("qemu-") && n.ends_with(".conf"))
        })
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            if let Some(conf) = parse_conf_line(&path, line) {
                out.push(conf);
            }
        }
    }
    Ok(out)
}

/// `:name:M:offset:magic:mask:interpreter:flags` with `\xNN` escapes in magic and mask.
fn parse_conf_line(path: &Path, line: &str) -> Option<QemuConf> {
    let line = line.trim();
    let delimiter = line.chars().next()?;
    if delimiter == '#' || delimiter == ';' || delimiter.is_alphanumeric() {
        return None;
    }
    let parts: Vec<&str> = line[delimiter.len_utf8()..].split(delimiter).collect();
    let [name, kind, offset, magic, mask, interpreter, flags] = parts.as_slice() else {
        return None;
    };
    if *kind != "M" || name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let handler = Handler {
        enabled: true,
        interpreter: PathBuf::from(interpreter),
        flags: flags.to_string(),
        offset: if offset.is_empty() {
            0
        } else {
            offset.parse().ok()?
        },
        magic: unescape(magic)?,
        mask: if mask.is_empty() {
            None
        } else {
            Some(unescape(mask)?)
        },
    };
    Some(QemuConf {
        path: path.to_path_buf(),
        name: name.to_string(),
        fields: parts[..6].iter().map(|s| s.to_string()).collect(),
        delimiter,
        flags: flags.to_string(),
        interpreter: PathBuf::from(interpreter),
        handler,
    })
}

/// Decodes binfmt_misc's `\xNN` escapes (other bytes stand for themselves).
fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len() / 4);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            let hex = s.get(i + 2..i + 4)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64_CONF: &str = r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF";

    fn listing(flags: &str, enabled: bool) -> String {
        format!(
            "{}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\noffset 0\n\
             magic 7f454c460201010000000000000000000200b700\n\
             mask ffffffffffffff00fffffffffffffffffeffffff\n",
            if enabled { "enabled" } else { "disabled" }
        )
    }

    fn dir_with(entries: &[(&str, String)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("status"), "enabled\n").unwrap();
        for (name, text) in entries {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn a_fix_binary_handler_runs_arm64_and_nothing_else() {
        let d = dir_with(&[("qemu-aarch64", listing("POCF", true))]);
        assert_eq!(
            emulation_for(d.path(), "arm64"),
            Emulation::Ready {
                handler: "qemu-aarch64".into(),
                interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into()
            }
        );
        assert_eq!(emulation_for(d.path(), "arm"), Emulation::Missing);
        assert_eq!(emulation_for(d.path(), "s390x"), Emulation::Missing);
        assert_eq!(emulation_for(d.path(), "amd64"), Emulation::Missing);
        assert_eq!(
            emulation_for(d.path(), "sparc"),
            Emulation::UnknownArchitecture
        );
    }

    #[test]
    fn a_handler_without_f_or_disabled_does_not_count_as_ready() {
        let d = dir_with(&[("qemu-aarch64", listing("OP", true))]);
        assert_eq!(
            emulation_for(d.path(), "arm64"),
            Emulation::NotFixBinary {
                handler: "qemu-aarch64".into()
            }
        );
        let d = dir_with(&[("qemu-aarch64", listing("OPF", false))]);
        assert_eq!(emulation_for(d.path(), "arm64"), Emulation::Missing);
        let missing = d.path().join("nothing-here");
        assert_eq!(emulation_for(&missing, "arm64"), Emulation::Missing);
    }

    #[test]
    fn emulated_architectures_are_those_a_ready_handler_runs() {
        let d = dir_with(&[
            ("qemu-aarch64", listing("POCF", true)),
            ("qemu-arm", "enabled\ninterpreter /x\nflags: OP\noffset 0\nmagic 7f454c4601010100000000000000000002002800\n".into()),
        ]);
        // The arm handler lacks `F`: it would not run inside a sandbox.
        assert_eq!(emulated_architectures(d.path()), vec!["arm64"]);
        assert!(emulated_architectures(&d.path().join("nothing-here")).is_empty());
    }

    #[test]
    fn hostile_listings_are_skipped() {
        let d = dir_with(&[
            ("a", "magic zz\n".into()),
            ("b", "enabled\nmagic 7f4\n".into()),
            (
                "c",
                "enabled\noffset 99999999999999999999999\nmagic 7f\n".into(),
            ),
            ("d", "enabled\nextension .exe\n".into()),
        ]);
        assert_eq!(emulation_for(d.path(), "arm64"), Emulation::Missing);
    }

    #[test]
    fn conf_lines_get_the_fix_binary_flag_once() {
        let conf = parse_conf_line(Path::new("qemu-aarch64.conf"), AARCH64_CONF).unwrap();
        assert_eq!(conf.name, "qemu-aarch64");
        let line = conf.line_with_fix_binary();
        assert_eq!(line, AARCH64_CONF, "OPF already has F");
        let without = AARCH64_CONF.replace(":OPF", ":OP");
        let conf = parse_conf_line(Path::new("x.conf"), &without).unwrap();
        assert!(conf.line_with_fix_binary().ends_with(":OPF"));
        assert!(conf.handler.matches(&elf_header("arm64").unwrap()));
        assert!(!conf.handler.matches(&elf_header("amd64").unwrap()));
        for bad in [
            "",
            "# comment",
            ":x:E::exe::/bin/true:",
            ":../x:M::\\x7f::/bin/true:",
            ":x:M::\\x7::/bin/true:",
        ] {
            assert!(parse_conf_line(Path::new("x.conf"), bad).is_none(), "{bad}");
        }
    }

    /// A stand-in binfmt_misc (its `register` an ordinary file) and a conf directory whose one
    /// handler runs `/bin/sh`, so the registration logic runs without touching the host's.
    fn fake_host(existing: Option<String>) -> (tempfile::TempDir, tempfile::TempDir) {
        let confs = tempfile::tempdir().unwrap();
        let line = AARCH64_CONF
            .replace(":OPF", ":OP")
            .replace("/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "/bin/sh");
        std::fs::write(confs.path().join("qemu-aarch64.conf"), line).unwrap();
        std::fs::write(confs.path().join("python3.conf"), ":python:M::ab::/bin/sh:").unwrap();
        let binfmt = dir_with(&[("register", String::new())]);
        if let Some(text) = existing {
            std::fs::write(binfmt.path().join("qemu-aarch64"), text).unwrap();
        }
        (confs, binfmt)
    }

    #[test]
    fn registration_adds_f_and_leaves_a_good_handler_alone() {
        let (confs, binfmt) = fake_host(None);
        let done = register_qemu_handlers(confs.path(), binfmt.path()).unwrap();
        assert_eq!(
            done,
            [Registration {
                handler: "qemu-aarch64".into(),
                interpreter: "/bin/sh".into(),
                outcome: RegistrationOutcome::Registered
            }],
            "only qemu-*.conf files count"
        );
        let written = std::fs::read_to_string(binfmt.path().join("register")).unwrap();
        assert!(written.starts_with(":qemu-aarch64:M::") && written.ends_with(":/bin/sh:OPF"));

        let good =
            listing("POF", true).replace("/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "/bin/sh");
        let (confs, binfmt) = fake_host(Some(good));
        let done = register_qemu_handlers(confs.path(), binfmt.path()).unwrap();
        assert_eq!(done[0].outcome, RegistrationOutcome::AlreadyRegistered);
        assert_eq!(
            std::fs::read_to_string(binfmt.path().join("register")).unwrap(),
            ""
        );

        let without_f =
            listing("OP", true).replace("/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "/bin/sh");
        let (confs, binfmt) = fake_host(Some(without_f));
        let done = register_qemu_handlers(confs.path(), binfmt.path()).unwrap();
        assert_eq!(done[0].outcome, RegistrationOutcome::Replaced);
        // The old handler was removed (`-1`) before the new one was registered.
        assert_eq!(
            std::fs::read_to_string(binfmt.path().join("qemu-aarch64")).unwrap(),
            "-1"
        );
        assert!(std::fs::read_to_string(binfmt.path().join("register"))
            .unwrap()
            .ends_with(":OPF"));
    }

    #[test]
    fn registering_without_qemu_confs_names_the_package() {
        let empty = tempfile::tempdir().unwrap();
        let e = register_qemu_handlers(empty.path(), empty.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("apt-get install qemu-user-static"), "{e}");
    }
}
