//! File ops (`COPY`, `ADD`, `WORKDIR`'s mkdir...): the base's snapshot chain is mounted with a
//! new snapshot as the overlay's upper directory and the actions (`crate::fileops`) are applied
//! there; a lone copy of a directory to a new destination is written into the snapshot
//! directly, linking unchanged files from the last run of the same COPY (`fileops::reuse`).

use super::{chain_and_accounts, snap_work_dir, Inputs, Operation};
use crate::{cleanup, fileops, Output, SolveError, VertexTask};
use futures::future::{BoxFuture, FutureExt};
use kiln_cache::{SnapshotId, Store};
use kiln_llb::file_action::Action;

pub(super) struct File<'a>(pub &'a kiln_llb::FileOp);

impl Operation for File<'_> {
    fn execute<'a>(
        &'a self,
        v: &'a VertexTask,
        inputs: &'a Inputs,
    ) -> BoxFuture<'a, Result<Output, SolveError>> {
        let f = self.0.clone();
        let store = v.solver.inner.store.clone();
        let outputs: Vec<Output> = inputs.iter().map(|r| r.output.clone()).collect();
        let op_store = store.clone();
        let identity = copy_identity(v, inputs);
        cleanup::blocking_snapshot(store, move || file_op(&op_store, &f, &outputs, &identity))
            .boxed()
    }

    fn owns_snapshot(&self) -> bool {
        true
    }

    /// `file_op` syncs its snapshot: it knows which files are links to a durable snapshot.
    fn syncs_its_snapshot(&self) -> bool {
        true
    }

    /// Later runs of this COPY link their unchanged files from this snapshot.
    fn recorded(&self, v: &VertexTask, inputs: &Inputs, snap: SnapshotId) {
        let identity = copy_identity(v, inputs);
        if let Err(e) = fileops::reuse::remember(&v.solver.inner.store, &identity, snap) {
            tracing::warn!(%snap, "cannot record the snapshot for link reuse: {e}");
        }
    }
}

/// What makes two runs of a file op the same COPY apart from the content it reads (see
/// `fileops::reuse`).
fn copy_identity(v: &VertexTask, inputs: &Inputs) -> String {
    fileops::reuse::identity(&v.digest, inputs.iter().map(|i| i.key.as_str()))
}

/// Runs a file op: mounts the base with a new snapshot on top, applies the actions, commits.
/// `identity` finds an earlier run of the same COPY to hard-link unchanged files from.
fn file_op(
    store: &Store,
    f: &kiln_llb::FileOp,
    inputs: &[Output],
    identity: &str,
) -> Result<Output, SolveError> {
    let base = if f.base < 0 {
        Output::Scratch
    } else {
        inputs
            .get(f.base as usize)
            .cloned()
            .ok_or_else(|| SolveError::Graph(format!("file op base {} out of range", f.base)))?
    };
    let parent = match base {
        Output::Snapshot(s) => Some(s),
        Output::Scratch => None,
        Output::Local(_) => {
            return Err(SolveError::Unsupported(
                "a file op on a local context".into(),
            ))
        }
    };
    let snaps = store.snapshots();
    let (chain, passwd, group) = chain_and_accounts(store, parent)?;
    // Removed again unless the op succeeds.
    let made = snaps.create_mutable(parent).map_err(SolveError::from)?;
    let snap = made.id();
    let mut linked = std::collections::HashSet::new();
    let result = (|| {
        let tmp = tempfile::Builder::new()
            .prefix("fileop-")
            .tempdir_in(store.tmp_dir())
            .map_err(SolveError::io("cannot make a temp dir"))?;
        let target = tmp.path().join("root");
        std::fs::create_dir_all(&target).map_err(SolveError::io(format!(
            "cannot create `{}`",
            target.display()
        )))?;
        let _work = snap_work_dir(store, snap)?;
        let guard = snaps
            .mount(&chain, Some(snap), &target)
            .map_err(SolveError::from)?;
        let root = guard.path().to_path_buf();
        let mut direct = None;
        for (n, action) in f.actions.iter().enumerate() {
            let Some(action) = &action.action else {
                continue;
            };
            let owner_opt = match action {
                Action::Copy(c) => c.owner.as_ref(),
                Action::Mkdir(m) => m.owner.as_ref(),
                Action::Mkfile(m) => m.owner.as_ref(),
                Action::Rm(_) => None,
            };
            let owner = fileops::resolve_owner(owner_opt, passwd.as_deref(), group.as_deref())?;
            match action {
                Action::Copy(c) => {
                    let src = if c.src_input < 0 {
                        Output::Scratch
                    } else {
                        inputs.get(c.src_input as usize).cloned().ok_or_else(|| {
                            SolveError::Graph(format!("copy source {} out of range", c.src_input))
                        })?
                    };
                    match src {
                        // A lone COPY of a context directory to a new destination: filled in the
                        // snapshot's directory once the overlay is unmounted (`fileops::direct`).
                        Output::Local(ctx) if f.actions.len() == 1 && direct.is_none() => {
                            let held = fileops::direct::Held::Local(ctx);
                            let pending =
                                fileops::direct::prepare(&root, c, &held.source(), owner)?;
                            match pending {
                                Some(p) => direct = Some((p, c, held, owner)),
                                None => fileops::apply(&root, action, Some(&held.source()), owner)?,
                            }
                        }
                        Output::Local(ctx) => {
                            let source = fileops::CopySource::Local(ctx.as_ref());
                            fileops::apply(&root, action, Some(&source), owner)?;
                        }
                        Output::Snapshot(s) => {
                            let src_chain = snaps.chain(s).map_err(SolveError::from)?;
                            let mnt = tmp.path().join(format!("src-{n}"));
                            std::fs::create_dir_all(&mnt).map_err(SolveError::io(format!(
                                "cannot create `{}`",
                                mnt.display()
                            )))?;
                            let g = snaps
                                .mount(&src_chain, None, &mnt)
                                .map_err(SolveError::from)?;
                            let held = fileops::direct::Held::Mounted(g);
                            // `COPY --from` a directory to a new destination: direct too.
                            if f.actions.len() == 1 && direct.is_none() {
                                let pending =
                                    fileops::direct::prepare(&root, c, &held.source(), owner)?;
                                if let Some(p) = pending {
                                    direct = Some((p, c, held, owner));
                                    continue;
                                }
                            }
                            fileops::apply(&root, action, Some(&held.source()), owner)?;
                            drop(held);
                        }
                        Output::Scratch => {
                            let empty = tmp.path().join(format!("empty-{n}"));
                            std::fs::create_dir_all(&empty).map_err(SolveError::io(format!(
                                "cannot create `{}`",
                                empty.display()
                            )))?;
                            let source = fileops::CopySource::Dir(&empty);
                            fileops::apply(&root, action, Some(&source), owner)?;
                        }
                    }
                }
                _ => fileops::apply(&root, action, None, owner)?,
            }
        }
        drop(guard);
        if let Some((pending, c, held, owner)) = direct {
            let dest = pending.dest().to_path_buf();
            // Link reuse needs the content hashes a context checksum memoises.
            let local = matches!(held, fileops::direct::Held::Local(_));
            let previous = local
                .then(|| fileops::reuse::previous(store, identity, &dest))
                .flatten();
            let placed = fileops::direct::finish(
                &snaps.fs_dir(snap),
                pending,
                c,
                &held.source(),
                owner,
                local.then(|| store.index()),
                previous.as_ref(),
            )?;
            drop(held);
            if let Some(placed) = placed {
                tracing::debug!(
                    %snap,
                    from = ?previous.as_ref().map(|p| p.snap),
                    linked = placed.linked.len(),
                    recorded = placed.files.len(),
                    "direct COPY placed"
                );
                fileops::reuse::write_manifest(store, snap, &dest, placed.files)?;
                linked.extend(placed.linked);
            }
        }
        Ok(())
    })();
    // The index must never name a snapshot whose files a crash could lose. The files linked
    // from the earlier run's snapshot (recorded, so synced) need only their directories synced.
    let started = std::time::Instant::now();
    result.and_then(|()| {
        snaps
            .sync_with_durable_links(snap, &linked)
            .map_err(SolveError::from)
    })?;
    tracing::debug!(%snap, linked = linked.len(), elapsed = ?started.elapsed(), "snapshot synced");
    Ok(Output::Snapshot(made.commit()))
}
