//! Local context checksums computed ahead: when a solve starts, every local context a step of
//! the build reads is walked and hashed on the blocking pool at once, so the I/O overlaps with
//! the pulls and `RUN`s that come before the step, instead of starting when the step's turn
//! comes. Each context reports one [`Event::Context`] (`[internal] load build context`) when the
//! last checksum of it is ready: how many files were checked and how many had to be read.

use crate::context::{self, LocalContext, Stats};
use crate::progress::{Event, ProgressSink};
use crate::SolveError;
use futures::channel::oneshot;
use futures::future::{BoxFuture, FutureExt, Shared};
use kiln_cache::Store;
use kiln_llb::{file_action::Action, op::Kind, Definition, Input, Op};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A checksum being computed, which any number of waiters may await.
pub(crate) type SumFuture = Shared<BoxFuture<'static, SumResult>>;

type SumResult = Result<String, Arc<SolveError>>;

/// The checksums a solve computes ahead, by the digest of the op that reads them and the index
/// of the input that is the context. Dropping it (the solve ended or was dropped) stops the
/// hashing that has not started yet.
pub(crate) struct Prefetch {
    sums: HashMap<(String, i64), SumFuture>,
    stop: Arc<AtomicBool>,
}

impl Prefetch {
    /// The checksums ahead for the op `digest`, by input index.
    pub(crate) fn for_op(&self, digest: &str) -> HashMap<i64, SumFuture> {
        self.sums
            .iter()
            .filter(|((d, _), _)| d == digest)
            .map(|((_, i), f)| (*i, f.clone()))
            .collect()
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One local context to hash: every op of the build that reads it, in the graph's order.
struct Job {
    vertex: usize,
    name: String,
    ctx: Arc<dyn LocalContext>,
    readers: Vec<(Vec<Selector>, oneshot::Sender<SumResult>)>,
}

/// Starts hashing, on the blocking pool, every local context that an op the root needs reads.
pub(crate) fn start(
    def: &Definition,
    roots: &[Input],
    locals: &HashMap<String, Arc<dyn LocalContext>>,
    store: &Store,
    progress: &Arc<dyn ProgressSink>,
) -> Prefetch {
    let stop = Arc::new(AtomicBool::new(false));
    let mut sums = HashMap::new();
    let digests: Vec<String> = def.ops.iter().map(Op::digest).collect();
    let by_digest: HashMap<&str, usize> = digests
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();
    let needed = needed_by_roots(def, roots, &by_digest);
    let mut jobs: Vec<Job> = Vec::new();
    let mut job_of: HashMap<usize, usize> = HashMap::new();
    for (idx, op) in def.ops.iter().enumerate() {
        if !needed.contains(&idx) {
            continue;
        }
        for (i, input) in op.inputs.iter().enumerate() {
            let Some(&src) = by_digest.get(input.digest.as_str()) else {
                continue;
            };
            let Some(ctx) = local_name(&def.ops[src]).and_then(|n| locals.get(n)) else {
                continue;
            };
            let job = *job_of.entry(src).or_insert_with(|| {
                let name = def
                    .metadata(&digests[src])
                    .map(|m| m.name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| digests[src].clone());
                jobs.push(Job {
                    vertex: src + 1,
                    name,
                    ctx: ctx.clone(),
                    readers: Vec::new(),
                });
                jobs.len() - 1
            });
            let (tx, rx) = oneshot::channel();
            jobs[job].readers.push((selectors(op, i as i64), tx));
            let fut = rx
                .map(|r| {
                    r.unwrap_or_else(|_| {
                        Err(Arc::new(SolveError::Op(
                            "the build context's checksum was not computed: the build stopped"
                                .into(),
                        )))
                    })
                })
                .boxed()
                .shared();
            sums.insert((digests[idx].clone(), i as i64), fut);
        }
    }
    for job in jobs {
        let (store, progress, stop) = (store.clone(), progress.clone(), stop.clone());
        tokio::task::spawn_blocking(move || run(job, &store, progress.as_ref(), &stop));
    }
    Prefetch { sums, stop }
}

fn run(job: Job, store: &Store, progress: &dyn ProgressSink, stop: &AtomicBool) {
    let started = Instant::now();
    let mut stats = Stats::default();
    for (selectors, tx) in job.readers {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let sum = checksum(job.ctx.as_ref(), &selectors, store).map(|(sum, s)| {
            stats += s;
            sum
        });
        // The reader may be gone (its build failed elsewhere): nothing to do then.
        let _ = tx.send(sum.map_err(Arc::new));
    }
    if !stop.load(Ordering::SeqCst) {
        progress.event(Event::Context {
            vertex: job.vertex,
            name: job.name,
            files: stats.files,
            hashed: stats.hashed,
            bytes: stats.bytes,
            elapsed: started.elapsed(),
        });
    }
}

/// The ops the roots need, by index.
fn needed_by_roots(
    def: &Definition,
    roots: &[Input],
    by_digest: &HashMap<&str, usize>,
) -> HashSet<usize> {
    let mut needed = HashSet::new();
    let mut todo: Vec<usize> = roots
        .iter()
        .filter_map(|r| by_digest.get(r.digest.as_str()).copied())
        .collect();
    while let Some(i) = todo.pop() {
        if !needed.insert(i) {
            continue;
        }
        for input in &def.ops[i].inputs {
            if let Some(&j) = by_digest.get(input.digest.as_str()) {
                todo.push(j);
            }
        }
    }
    needed
}

/// The name of the local context an op is the source of (`local://NAME`).
fn local_name(op: &Op) -> Option<&str> {
    match &op.kind {
        Some(Kind::Source(s)) => s.identifier.strip_prefix("local://"),
        _ => None,
    }
}

/// A path an op reads from a local context, and whether a symlink as its last component is
/// followed (a `COPY` source) or read as the link it is.
pub(crate) type Selector = (String, bool);

/// The paths an op reads from its input `index` when that input is a local context: a file op
/// its copies' sources, an exec op its mounts' selectors (the whole context when one mounts all
/// of it, as `""`: the key of such a step is the same as before selectors counted).
pub(crate) fn selectors(op: &Op, index: i64) -> Vec<Selector> {
    let whole = || vec![(String::new(), true)];
    match &op.kind {
        Some(Kind::Exec(e)) => {
            let mut picked = Vec::new();
            for m in e.mounts.iter().filter(|m| m.input == index) {
                // A mount source is a path, not a pattern: one with a wildcard character is
                // keyed on the whole context rather than on what the pattern would match.
                let sel = m.selector.trim_matches('/');
                if sel.is_empty() || sel.contains(['*', '?', '[', '\\']) {
                    return whole();
                }
                // Followed through a last symlink, as `mounts.rs` mounts it.
                picked.push((m.selector.clone(), true));
            }
            if picked.is_empty() {
                return whole();
            }
            picked
        }
        Some(Kind::File(f)) => f
            .actions
            .iter()
            .filter_map(|a| match &a.action {
                Some(Action::Copy(c)) if c.src_input == index => {
                    Some((c.src.clone(), c.follow_symlinks))
                }
                _ => None,
            })
            .collect(),
        _ => whole(),
    }
}

/// Checksums of contexts that have a [`LocalContext::fingerprint`], by the fingerprint and the
/// selectors: such a context is the same whenever its fingerprint is, so a long-lived process
/// (the daemon) answers an unchanged context without walking it.
static FINGERPRINTED: std::sync::Mutex<Option<SumsByFingerprint>> = std::sync::Mutex::new(None);

/// A checksum and what computing it cost, by a hash of the fingerprint and the selectors.
type SumsByFingerprint = HashMap<[u8; 32], (String, Stats)>;

/// How many checksums [`FINGERPRINTED`] keeps; past it, it starts again empty (a few hundred
/// bytes each).
const FINGERPRINTED_MAX: usize = 4096;

/// The checksum of what `selectors` pick from the context (see `docs/cache-keys.md`), and what
/// computing it cost (for a fingerprinted context seen before: the files its first checksum
/// checked, none read).
pub(crate) fn checksum(
    ctx: &dyn LocalContext,
    selectors: &[Selector],
    store: &Store,
) -> Result<(String, Stats), SolveError> {
    let Some(fingerprint) = ctx.fingerprint() else {
        return checksum_walking(ctx, selectors, store);
    };
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-fingerprinted-sum-v1\0");
    h.update(&fingerprint);
    for (src, follow) in selectors {
        h.update(&(src.len() as u64).to_le_bytes());
        h.update(src.as_bytes());
        h.update(&[u8::from(*follow)]);
    }
    let key: [u8; 32] = h.finalize().into();
    let memo = || FINGERPRINTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((sum, stats)) = memo().get_or_insert_with(HashMap::new).get(&key) {
        let stats = Stats {
            files: stats.files,
            hashed: 0,
            bytes: 0,
        };
        return Ok((sum.clone(), stats));
    }
    let (sum, stats) = checksum_walking(ctx, selectors, store)?;
    let mut memo = memo();
    let map = memo.get_or_insert_with(HashMap::new);
    if map.len() >= FINGERPRINTED_MAX {
        map.clear();
    }
    map.insert(key, (sum.clone(), stats));
    Ok((sum, stats))
}

fn checksum_walking(
    ctx: &dyn LocalContext,
    selectors: &[Selector],
    store: &Store,
) -> Result<(String, Stats), SolveError> {
    let mut sources = Vec::new();
    for (src, follow) in selectors {
        sources.extend(context::resolve_sources(ctx, src, *follow)?);
    }
    sources.sort();
    sources.dedup();
    context::checksum(ctx, &sources, store.index())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_llb::{ExecOp, Mount};

    fn exec_mounting(selectors: &[&str]) -> Op {
        let mut mounts = vec![Mount::rootfs(0)];
        for (n, s) in selectors.iter().enumerate() {
            let mut m = Mount::rootfs(1);
            m.selector = (*s).into();
            m.dest = format!("/m{n}");
            m.output = -1;
            mounts.push(m);
        }
        Op {
            inputs: vec![],
            kind: Some(Kind::Exec(ExecOp {
                meta: None,
                mounts,
                network: 0,
            })),
        }
    }

    fn sel(s: &str) -> Selector {
        (s.into(), true)
    }

    #[test]
    fn an_exec_reads_what_its_mounts_select_of_a_context() {
        let two = exec_mounting(&["/package.json", "/src/lib"]);
        assert_eq!(
            selectors(&two, 1),
            vec![sel("/package.json"), sel("/src/lib")]
        );
        // All of it: the selector the frontend writes for a mount without `source`.
        assert_eq!(selectors(&exec_mounting(&["/"]), 1), vec![sel("")]);
        assert_eq!(
            selectors(&exec_mounting(&["/package.json", ""]), 1),
            vec![sel("")]
        );
        // A path with a wildcard character is not taken as a pattern.
        assert_eq!(selectors(&exec_mounting(&["/a[1].txt"]), 1), vec![sel("")]);
        // An input no mount reads (here the root filesystem's) is read whole, as before.
        assert_eq!(selectors(&two, 2), vec![sel("")]);
    }

    struct Vouched {
        root: std::path::PathBuf,
        fingerprint: Option<[u8; 32]>,
    }

    impl LocalContext for Vouched {
        fn root(&self) -> &std::path::Path {
            &self.root
        }
        fn excluded(&self, _: &str) -> bool {
            false
        }
        fn may_reinclude(&self) -> bool {
            false
        }
        fn fingerprint(&self) -> Option<[u8; 32]> {
            self.fingerprint
        }
    }

    #[test]
    fn a_context_with_the_same_fingerprint_is_not_walked_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let root = dir.path().join("ctx");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a"), "one").unwrap();
        let mut unique = [7u8; 32];
        unique[..8].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
        let ctx = |fingerprint| Vouched {
            root: root.clone(),
            fingerprint,
        };
        let all = [sel("/")];
        let (first, stats) = checksum(&ctx(Some(unique)), &all, &store).unwrap();
        assert_eq!((stats.files, stats.hashed), (1, 1));
        // What the owner vouches for is believed: a change behind its back is not seen...
        std::fs::write(root.join("a"), "two").unwrap();
        let (again, stats) = checksum(&ctx(Some(unique)), &all, &store).unwrap();
        assert_eq!(again, first);
        assert_eq!((stats.files, stats.hashed), (1, 0));
        // ...until it gives a new fingerprint, or none.
        unique[31] ^= 1;
        let (renewed, _) = checksum(&ctx(Some(unique)), &all, &store).unwrap();
        let (walked, _) = checksum(&ctx(None), &all, &store).unwrap();
        assert_ne!(renewed, first);
        assert_eq!(renewed, walked);
    }
}
