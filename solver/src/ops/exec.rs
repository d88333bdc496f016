//! Exec ops (`RUN`): the command runs in the sandbox (`kiln_exec::run`, at most `--jobs` at
//! once) over an overlay of the root filesystem's snapshot chain, with its `RUN --mount`s
//! (`crate::mounts`); the overlay's upper directory becomes the step's snapshot.

use super::{chain_and_accounts, input_output, snap_work_dir, Inputs, Operation};
use crate::{mounts, progress, Output, SolveError, VertexTask};
use futures::future::{BoxFuture, FutureExt};
use kiln_llb::{MountType, NetworkMode};
use std::path::PathBuf;
use std::time::Instant;

pub(super) struct Exec<'a>(pub &'a kiln_llb::ExecOp);

impl Operation for Exec<'_> {
    fn execute<'a>(
        &'a self,
        v: &'a VertexTask,
        inputs: &'a Inputs,
    ) -> BoxFuture<'a, Result<Output, SolveError>> {
        exec(v, self.0, inputs).boxed()
    }

    fn reports_start(&self) -> bool {
        true
    }

    fn owns_snapshot(&self) -> bool {
        true
    }
}

async fn exec(v: &VertexTask, e: &kiln_llb::ExecOp, inputs: &Inputs) -> Result<Output, SolveError> {
    let store = &v.solver.inner.store;
    let meta = e.meta.clone().unwrap_or_default();
    let mut rootfs_input: Option<Output> = None;
    for m in &e.mounts {
        if m.dest == "/" && m.mount_type == MountType::Bind as i32 {
            rootfs_input = Some(if m.input < 0 {
                Output::Scratch
            } else {
                input_output(inputs, m.input)?
            });
        }
    }
    let parent = match rootfs_input {
        Some(Output::Snapshot(s)) => Some(s),
        Some(Output::Scratch) | None => None,
        Some(Output::Local(_)) => {
            return Err(SolveError::Unsupported(
                "a local context as the root filesystem".into(),
            ))
        }
    };
    let snaps = store.snapshots();
    let (chain, passwd, group) = chain_and_accounts(store, parent)?;
    let user_spec = if meta.user.is_empty() {
        "0"
    } else {
        &meta.user
    };
    let user = kiln_exec::resolve_user(user_spec, passwd.as_deref(), group.as_deref())
        .map_err(SolveError::from)?;
    let network = if e.network == NetworkMode::None as i32 || v.session.network_none {
        kiln_exec::Network::None
    } else {
        kiln_exec::Network::Host
    };
    let spec = kiln_exec::default_spec(&kiln_exec::ProcessSpec {
        args: meta.args.clone(),
        env: meta.env.clone(),
        cwd: if meta.cwd.is_empty() {
            "/".into()
        } else {
            meta.cwd.clone()
        },
        user,
        hostname: if meta.hostname.is_empty() {
            "kiln".into()
        } else {
            meta.hostname.clone()
        },
        network,
        terminal: false,
    })
    .map_err(SolveError::from)?;
    // `RUN --mount`s: prepared (and, for `sharing=locked`, waited for) before taking a slot.
    let mount_inputs: Vec<mounts::MountInput> = inputs
        .iter()
        .map(|r| mounts::MountInput {
            output: r.output.clone(),
            key: r.key.clone(),
        })
        .collect();
    let (store2, session, llb_mounts) = (store.clone(), v.session.clone(), e.mounts.clone());
    let extra = tokio::task::spawn_blocking(move || {
        mounts::prepare(&store2, &session, &llb_mounts, &mount_inputs)
    })
    .await
    .map_err(SolveError::from)??;
    let mut spec = spec;
    mounts::add_to_spec(&mut spec, &extra)?;
    v.session
        .limits
        .apply_to(&mut spec)
        .map_err(SolveError::from)?;
    // Removed unless the step succeeds: a failed or canceled `RUN` leaves nothing behind.
    let owned = snaps.create_mutable(parent)?;
    let snap = owned.id();
    let scratch = tempfile::Builder::new()
        .prefix("exec-")
        .tempdir_in(store.tmp_dir())
        .map_err(SolveError::io("cannot make a temp dir"))?;
    let mut lower: Vec<PathBuf> = chain.iter().map(|s| snaps.fs_dir(*s)).collect();
    if lower.is_empty() {
        let empty = scratch.path().join("empty");
        std::fs::create_dir_all(&empty).map_err(SolveError::io(format!(
            "cannot create `{}`",
            empty.display()
        )))?;
        lower.push(empty);
    }
    let upper = snaps.fs_dir(snap);
    let work = snap_work_dir(store, snap)?;
    let target = scratch.path().join("rootfs");
    let state = scratch.path().join("state");
    for d in [&target, &state] {
        std::fs::create_dir_all(d)
            .map_err(SolveError::io(format!("cannot create `{}`", d.display())))?;
    }
    let config = kiln_exec::SandboxConfig {
        spec,
        rootfs: kiln_exec::RootFs {
            lower,
            upper: Some(upper.clone()),
            work: Some(work),
            target,
        },
        network,
        stdio: kiln_exec::Stdio::Piped,
        state_dir: state,
        runtime: v.session.runtime.clone(),
    };
    let permit = v
        .solver
        .inner
        .exec_slots
        .acquire()
        .await
        .map_err(|_| SolveError::Op("the build's `--jobs` slots were closed".into()))?;
    v.started();
    let log = progress::StepLog::new(v.vertex, Instant::now(), v.progress.clone());
    let run = kiln_exec::run(config, Some(Box::new(log.clone())));
    tokio::pin!(run);
    // Lines a step leaves unfinished (a prompt before a long download) show after a pause.
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let outcome = loop {
        tokio::select! {
            o = &mut run => break o,
            _ = tick.tick() => log.flush_stale(),
        }
    };
    log.finish();
    drop(permit);
    drop(extra);
    let outcome = match outcome {
        Ok(o) => o,
        Err(err) => return Err(SolveError::Sandbox(err)),
    };
    if outcome.exit_code != 0 {
        let mut lines = log.tail();
        // Rootless with only the caller's own ids mapped, every other id is missing: say
        // why `chown`/`setuid` to one fails, as the command's own message cannot.
        if lines.contains("Invalid argument")
            && kiln_exec::in_user_namespace()
            && !kiln_exec::has_subordinate_ids()
        {
            lines.push_str(
                "\nnote: rootless kiln has only your own user mapped (as root): other user and group ids do not exist here, so changing to them fails with `Invalid argument`; give your user ranges in /etc/subuid and /etc/subgid and install newuidmap/newgidmap (package uidmap), or build as root",
            );
        }
        if let Some(limit) = outcome.out_of_memory {
            return Err(SolveError::OutOfMemory {
                command: meta.args.join(" "),
                limit,
                tail: lines,
            });
        }
        return Err(SolveError::ExecFailed {
            command: meta.args.join(" "),
            exit_code: outcome.exit_code,
            tail: lines,
        });
    }
    // The mount points the sandbox had to create are gone already: `kiln_exec::run` removes
    // them (and the directories copied up only for them) from the upper directory.
    Ok(Output::Snapshot(owned.commit()))
}
