//! Pins the cache keys of a small build (file ops, copies from a context, a merge, an exec with a
//! context mount, a git source): a changed key silently throws away every user's cache, so a
//! change here must be deliberate (and bump `kiln-cache-v1`). And what a step's key covers: a
//! bind mount of part of the context keys on that part only.
//!
//! A test binary of its own (`harness = false`): the exec step's sandbox re-executes the current
//! binary, so `main` must hand over to the sandbox first thing, as kiln's own `main` does.

use kiln_cache::Store;
use kiln_llb::{
    file_action::Action, op::Kind, DefinitionBuilder, ExecMeta, ExecOp, FileAction, FileCopy,
    FileMkdir, FileMkfile, FileOp, KeyValue, MergeOp, Mount, Op, OpMetadata, SourceOp,
};
use kiln_registry::{ClientOptions, Platform, RegistryClient};
use kiln_solver::{LocalContext, NoProgress, Output, SolveOutput, SolveRequest, Solver};
use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

struct Dir(PathBuf);

impl LocalContext for Dir {
    fn root(&self) -> &Path {
        &self.0
    }
    fn excluded(&self, rel: &str) -> bool {
        rel == "ignored"
    }
    fn may_reinclude(&self) -> bool {
        false
    }
}

fn write(path: &Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A static x86-64 program that exits 0: the same bytes on every host (a host binary such as
/// busybox would put the host's version into the keys).
fn exit_zero_elf() -> Vec<u8> {
    let code = [0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05]; // mov eax, 60; xor edi, edi; syscall
    let (base, header) = (0x40_0000u64, 64u64 + 56);
    let size = header + code.len() as u64;
    let mut e = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    e.extend(2u16.to_le_bytes()); // executable
    e.extend(0x3eu16.to_le_bytes()); // x86-64
    e.extend(1u32.to_le_bytes());
    e.extend((base + header).to_le_bytes()); // entry
    e.extend(64u64.to_le_bytes()); // program headers
    e.extend(0u64.to_le_bytes()); // no section headers
    e.extend(0u32.to_le_bytes());
    for v in [64u16, 56, 1, 0, 0, 0] {
        e.extend(v.to_le_bytes());
    }
    e.extend(1u32.to_le_bytes()); // PT_LOAD
    e.extend(5u32.to_le_bytes()); // r-x
    e.extend(0u64.to_le_bytes());
    e.extend(base.to_le_bytes());
    e.extend(base.to_le_bytes());
    e.extend(size.to_le_bytes());
    e.extend(size.to_le_bytes());
    e.extend(0x1000u64.to_le_bytes());
    e.extend(code);
    e
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "kiln")
        .env("GIT_AUTHOR_EMAIL", "kiln@example.com")
        .env("GIT_COMMITTER_NAME", "kiln")
        .env("GIT_COMMITTER_EMAIL", "kiln@example.com")
        .env("GIT_AUTHOR_DATE", "2020-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2020-01-01T00:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

fn op(inputs: &[&kiln_llb::OutputRef], kind: Kind) -> Op {
    Op {
        inputs: inputs.iter().map(|r| r.input()).collect(),
        kind: Some(kind),
    }
}

fn file(base: i64, actions: Vec<Action>) -> Kind {
    Kind::File(FileOp {
        base,
        actions: actions
            .into_iter()
            .map(|a| FileAction { action: Some(a) })
            .collect(),
    })
}

fn copy(src_input: i64, src: &str, dest: &str) -> Action {
    Action::Copy(FileCopy {
        src_input,
        src: src.into(),
        dest: dest.into(),
        mode: -1,
        follow_symlinks: true,
        dir_contents_only: true,
        create_dest_path: true,
        allow_wildcard: true,
        ..Default::default()
    })
}

fn main() {
    kiln_exec::sandbox_main_if_requested();
    if !cfg!(target_arch = "x86_64") {
        println!("test cache_keys_stay_the_same_across_kiln_versions ... ignored (x86-64 only)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(cache_keys_stay_the_same_across_kiln_versions());
    println!("test cache_keys_stay_the_same_across_kiln_versions ... ok");
    rt.block_on(bind_mount_of_one_file_reruns_only_when_that_file_changes());
    println!("test bind_mount_of_one_file_reruns_only_when_that_file_changes ... ok");
    rt.block_on(copy_and_bind_of_part_of_a_stage_rerun_only_when_that_part_changes());
    println!("test copy_and_bind_of_part_of_a_stage_rerun_only_when_that_part_changes ... ok");
    rt.block_on(a_stage_that_reruns_to_the_same_bytes_leaves_the_steps_after_it_cached());
    println!("test a_stage_that_reruns_to_the_same_bytes_leaves_the_steps_after_it_cached ... ok");
    rt.block_on(wildcard_copy_of_a_stage_reruns_only_when_what_it_matches_changes());
    println!("test wildcard_copy_of_a_stage_reruns_only_when_what_it_matches_changes ... ok");
}

async fn cache_keys_stay_the_same_across_kiln_versions() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("a.txt"), b"a\n", 0o644);
    write(&ctx.join("src/main.c"), b"int main(){}\n", 0o644);
    write(&ctx.join("src/lib/x.h"), b"#pragma once\n", 0o600);
    write(&ctx.join("ignored"), b"not part of any key\n", 0o644);
    write(&ctx.join("bin/true"), &exit_zero_elf(), 0o755);
    // The remote's URL is part of the git source's digest, so it must not move between runs.
    let repo = std::env::temp_dir().join("kiln-solver-cache-keys-repo");
    let _ = std::fs::remove_dir_all(&repo);
    write(&repo.join("README"), b"hello\n", 0o644);
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);

    let local = |b: &mut DefinitionBuilder| {
        b.add(
            Op {
                inputs: vec![],
                kind: Some(Kind::Source(SourceOp {
                    identifier: "local://context".into(),
                    attrs: vec![],
                })),
            },
            OpMetadata::default(),
        )
    };
    let mut b = DefinitionBuilder::default();
    let context = local(&mut b);
    let base = b.add(
        op(
            &[],
            file(
                -1,
                vec![
                    Action::Mkdir(FileMkdir {
                        path: "/app".into(),
                        mode: 0o755,
                        make_parents: true,
                        owner: None,
                    }),
                    Action::Mkfile(FileMkfile {
                        path: "/app/hello".into(),
                        mode: 0o644,
                        data: b"hi\n".to_vec(),
                        owner: None,
                    }),
                ],
            ),
        ),
        OpMetadata::default(),
    );
    let one_file = b.add(
        op(
            &[&base, &context],
            file(0, vec![copy(1, "/a.txt", "/app/")]),
        ),
        OpMetadata::default(),
    );
    let a_dir = b.add(
        op(&[&context], file(-1, vec![copy(0, "/src", "/src/")])),
        OpMetadata::default(),
    );
    let wildcard = b.add(
        op(&[&context], file(-1, vec![copy(0, "/*.txt", "/w/")])),
        OpMetadata::default(),
    );
    let merged = b.add(
        op(
            &[&one_file, &a_dir],
            Kind::Merge(MergeOp { inputs: vec![0, 1] }),
        ),
        OpMetadata::default(),
    );
    let with_shell = b.add(
        op(
            &[&merged, &context],
            file(0, vec![copy(1, "/bin", "/bin/")]),
        ),
        OpMetadata::default(),
    );
    let mut ctx_mount = Mount::rootfs(1);
    ctx_mount.dest = "/ctx".into();
    ctx_mount.output = -1;
    ctx_mount.readonly = true;
    let run = b.add(
        op(
            &[&with_shell, &context],
            Kind::Exec(ExecOp {
                meta: Some(ExecMeta {
                    args: vec!["/bin/true".into()],
                    env: vec!["PATH=/bin".into()],
                    cwd: "/".into(),
                    ..Default::default()
                }),
                mounts: vec![Mount::rootfs(0), ctx_mount],
                network: 0,
            }),
        ),
        OpMetadata::default(),
    );
    let checkout = b.add(
        op(
            &[],
            Kind::Source(SourceOp {
                identifier: "git://example.com/repo.git#main".into(),
                attrs: vec![KeyValue {
                    key: "git.fullurl".into(),
                    value: format!("file://{}", repo.display()),
                }],
            }),
        ),
        OpMetadata::default(),
    );
    let all = b.add(
        op(
            &[&run, &wildcard, &checkout],
            Kind::Merge(MergeOp {
                inputs: vec![0, 1, 2],
            }),
        ),
        OpMetadata::default(),
    );
    let definition = b.build(Some(all));

    let store = Store::open(&t.path().join("store")).unwrap();
    let out = solve(&store, definition, &ctx).await;
    assert!(matches!(out.root, Output::Snapshot(_)));
    let keys: BTreeSet<String> = store
        .index()
        .list()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    // Recorded with kiln before the solver's ops moved to `solver/src/ops/` (one per step but
    // the local source, which is read in place; sorted, as the index lists them).
    assert_eq!(
        keys,
        [
            "3512e999aa56a35d52eca000e3cdab92f97fe20b4bff156d1c35544e69e45109",
            "3aa833537d6c21574456fae874d0e9418877dbc1336904fbd7b2005651f5589f",
            "513de18068cabd0314d9e026b5a543323ed438e4fc8ec4379118f7689d59140d",
            "6253846b6ad95186749dd58ceb579616fd3ad61f97d64f18e42f99fc9b8687ff",
            "74103b20063a6a08a6b9eae78313ca00979446603d3f7d145cb10ed00921b6bc",
            "7962732512c53711406815515d8b2781d358d65c4c6c1b602b16b46ab083a697",
            "a45825a0c1e2888f87082d2f6af7c4cad8ffb6680b11e57ffd6dd727d5734636",
            "b9681b76010e7f589aaf2f2c3a9e6254fb14d6fed2420c536f2adfc65dc6bda3",
            "e6aaad872a0688d7876404c3d59972227bcf37ac58de61e9a69f50f833135e39",
        ]
    );
}

async fn solve(store: &Store, definition: kiln_llb::Definition, ctx: &Path) -> SolveOutput {
    let registry = RegistryClient::new(ClientOptions::default()).unwrap();
    let solver = Solver::new(store.clone(), registry, Platform::host(), 2);
    let locals: HashMap<String, Arc<dyn LocalContext>> =
        HashMap::from([("context".to_string(), Arc::new(Dir(ctx.into())) as _)]);
    solver
        .solve(SolveRequest {
            definition,
            locals,
            progress: Arc::new(NoProgress),
            secrets: HashMap::new(),
            ssh: HashMap::new(),
            network_none: true,
            runtime: kiln_exec::Runtime::default(),
            limits: kiln_exec::Limits::default(),
        })
        .await
        .unwrap()
}

/// `RUN --mount=type=bind,source=package.json,target=/package.json` keys on that file only, as
/// BuildKit does: editing another file of the context leaves the step cached.
async fn bind_mount_of_one_file_reruns_only_when_that_file_changes() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("package.json"), b"{}\n", 0o644);
    write(&ctx.join("src/index.js"), b"one\n", 0o644);
    write(&ctx.join("bin/true"), &exit_zero_elf(), 0o755);
    let definition = || {
        let mut b = DefinitionBuilder::default();
        let context = b.add(
            op(
                &[],
                Kind::Source(SourceOp {
                    identifier: "local://context".into(),
                    attrs: vec![],
                }),
            ),
            OpMetadata::default(),
        );
        let rootfs = b.add(
            op(&[&context], file(-1, vec![copy(0, "/bin", "/bin/")])),
            OpMetadata::default(),
        );
        let mut package = Mount::rootfs(1);
        package.selector = "/package.json".into();
        package.dest = "/package.json".into();
        package.output = -1;
        package.readonly = true;
        let run = b.add(
            op(
                &[&rootfs, &context],
                Kind::Exec(ExecOp {
                    meta: Some(ExecMeta {
                        args: vec!["/bin/true".into()],
                        cwd: "/".into(),
                        ..Default::default()
                    }),
                    mounts: vec![Mount::rootfs(0), package],
                    network: 0,
                }),
            ),
            OpMetadata::default(),
        );
        b.build(Some(run))
    };
    let store = Store::open(&t.path().join("store")).unwrap();
    let first = solve(&store, definition(), &ctx).await;
    assert_eq!((first.executed, first.cached), (2, 0));

    write(&ctx.join("src/index.js"), b"two\n", 0o644);
    let unselected = solve(&store, definition(), &ctx).await;
    assert_eq!(
        (unselected.executed, unselected.cached),
        (0, 2),
        "a file the mount does not select changed: nothing runs again"
    );

    write(&ctx.join("package.json"), b"{\"a\": 1}\n", 0o644);
    let selected = solve(&store, definition(), &ctx).await;
    assert_eq!(
        (selected.executed, selected.cached),
        (1, 1),
        "the mounted file changed: the step runs again"
    );
}

fn context_source(b: &mut DefinitionBuilder) -> kiln_llb::OutputRef {
    b.add(
        op(
            &[],
            Kind::Source(SourceOp {
                identifier: "local://context".into(),
                attrs: vec![],
            }),
        ),
        OpMetadata::default(),
    )
}

fn exec_true(env: Vec<String>, mounts: Vec<Mount>) -> Kind {
    Kind::Exec(ExecOp {
        meta: Some(ExecMeta {
            args: vec!["/bin/true".into()],
            env,
            cwd: "/".into(),
            ..Default::default()
        }),
        mounts,
        network: 0,
    })
}

fn mkfile(path: &str, data: &[u8]) -> Action {
    Action::Mkfile(FileMkfile {
        path: path.into(),
        mode: 0o644,
        data: data.to_vec(),
        owner: None,
    })
}

/// `COPY --from=stage /out/x` and `RUN --mount=from=stage,source=/out` key on what they select
/// of the stage, as BuildKit does: a change elsewhere in the stage leaves them cached.
async fn copy_and_bind_of_part_of_a_stage_rerun_only_when_that_part_changes() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("bin/true"), &exit_zero_elf(), 0o755);
    let definition = |x: &[u8], y: &[u8]| {
        let mut b = DefinitionBuilder::default();
        let context = context_source(&mut b);
        let rootfs = b.add(
            op(&[&context], file(-1, vec![copy(0, "/bin", "/bin/")])),
            OpMetadata::default(),
        );
        let stage = b.add(
            op(
                &[],
                file(
                    -1,
                    vec![
                        Action::Mkdir(FileMkdir {
                            path: "/out".into(),
                            mode: 0o755,
                            make_parents: true,
                            owner: None,
                        }),
                        mkfile("/out/x", x),
                        mkfile("/y", y),
                    ],
                ),
            ),
            OpMetadata::default(),
        );
        let copied = b.add(
            op(&[&rootfs, &stage], file(0, vec![copy(1, "/out/x", "/x")])),
            OpMetadata::default(),
        );
        let mut out = Mount::rootfs(1);
        out.selector = "/out".into();
        out.dest = "/out".into();
        out.output = -1;
        out.readonly = true;
        let run = b.add(
            op(
                &[&copied, &stage],
                exec_true(vec![], vec![Mount::rootfs(0), out]),
            ),
            OpMetadata::default(),
        );
        b.build(Some(run))
    };
    let store = Store::open(&t.path().join("store")).unwrap();
    let first = solve(&store, definition(b"x", b"one"), &ctx).await;
    assert_eq!((first.executed, first.cached), (4, 0));

    let unselected = solve(&store, definition(b"x", b"two"), &ctx).await;
    assert_eq!(
        (unselected.executed, unselected.cached),
        (1, 3),
        "only the stage's `/y` changed: the COPY and the RUN that read `/out` stay cached"
    );

    let selected = solve(&store, definition(b"x2", b"two"), &ctx).await;
    assert_eq!(
        (selected.executed, selected.cached),
        (3, 1),
        "the stage's `/out/x` changed: the COPY and the RUN run again"
    );
}

/// A stage's `RUN` runs again (its environment changed) and makes the same bytes: the `COPY
/// --from` of its output and the steps after it stay cached, as BuildKit finds them by the
/// checksum of the copied content.
async fn a_stage_that_reruns_to_the_same_bytes_leaves_the_steps_after_it_cached() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    write(&ctx.join("bin/true"), &exit_zero_elf(), 0o755);
    let definition = |version: &str| {
        let mut b = DefinitionBuilder::default();
        let context = context_source(&mut b);
        let rootfs = b.add(
            op(&[&context], file(-1, vec![copy(0, "/bin", "/bin/")])),
            OpMetadata::default(),
        );
        let build = b.add(
            op(
                &[&rootfs],
                exec_true(vec![format!("VERSION={version}")], vec![Mount::rootfs(0)]),
            ),
            OpMetadata::default(),
        );
        let copied = b.add(
            op(&[&build], file(-1, vec![copy(0, "/bin/true", "/bin/true")])),
            OpMetadata::default(),
        );
        let after = b.add(
            op(&[&copied], exec_true(vec![], vec![Mount::rootfs(0)])),
            OpMetadata::default(),
        );
        b.build(Some(after))
    };
    let store = Store::open(&t.path().join("store")).unwrap();
    let first = solve(&store, definition("1"), &ctx).await;
    assert_eq!((first.executed, first.cached), (4, 0));

    let rerun = solve(&store, definition("2"), &ctx).await;
    assert_eq!(
        (rerun.executed, rerun.cached),
        (1, 3),
        "the stage's RUN ran again to the same `/bin/true`: the COPY and the RUN after it stay cached"
    );
    // Warm: the stage's new result is cached, and so is everything after it, again.
    let warm = solve(&store, definition("2"), &ctx).await;
    assert_eq!((warm.executed, warm.cached), (0, 4));
}

/// `COPY --from=stage /out/*.txt /dst/` keys on the files the pattern matched, as BuildKit's
/// wildcard checksum: a change elsewhere in the stage, even beside the matches, leaves it
/// cached; a new match or a match's new content runs it again.
async fn wildcard_copy_of_a_stage_reruns_only_when_what_it_matches_changes() {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let definition = |files: &[(&str, &[u8])]| {
        let mut b = DefinitionBuilder::default();
        let mut actions = vec![Action::Mkdir(FileMkdir {
            path: "/out".into(),
            mode: 0o755,
            make_parents: true,
            owner: None,
        })];
        actions.extend(files.iter().map(|(path, data)| mkfile(path, data)));
        let stage = b.add(op(&[], file(-1, actions)), OpMetadata::default());
        let copied = b.add(
            op(&[&stage], file(-1, vec![copy(0, "/out/*.txt", "/dst/")])),
            OpMetadata::default(),
        );
        b.build(Some(copied))
    };
    let store = Store::open(&t.path().join("store")).unwrap();
    let first = solve(
        &store,
        definition(&[("/out/a.txt", b"a"), ("/out/b.bin", b"b"), ("/y", b"1")]),
        &ctx,
    )
    .await;
    assert_eq!((first.executed, first.cached), (2, 0));

    let elsewhere = solve(
        &store,
        definition(&[("/out/a.txt", b"a"), ("/out/b.bin", b"b2"), ("/y", b"2")]),
        &ctx,
    )
    .await;
    assert_eq!(
        (elsewhere.executed, elsewhere.cached),
        (1, 1),
        "the stage changed only where `/out/*.txt` does not match: the COPY stays cached"
    );

    let new_match = solve(
        &store,
        definition(&[
            ("/out/a.txt", b"a"),
            ("/out/b.bin", b"b2"),
            ("/out/c.txt", b"c"),
            ("/y", b"2"),
        ]),
        &ctx,
    )
    .await;
    assert_eq!(
        (new_match.executed, new_match.cached),
        (2, 0),
        "a new match: the COPY runs again"
    );

    let changed = solve(
        &store,
        definition(&[
            ("/out/a.txt", b"a2"),
            ("/out/b.bin", b"b2"),
            ("/out/c.txt", b"c"),
            ("/y", b"2"),
        ]),
        &ctx,
    )
    .await;
    assert_eq!(
        (changed.executed, changed.cached),
        (2, 0),
        "a match's content changed: the COPY runs again"
    );
    let Output::Snapshot(snap) = changed.root else {
        panic!("the COPY made no snapshot");
    };
    let dst = store.snapshots().fs_dir(snap).join("dst");
    assert_eq!(std::fs::read(dst.join("a.txt")).unwrap(), b"a2");
    assert!(!dst.join("b.bin").exists());
}
