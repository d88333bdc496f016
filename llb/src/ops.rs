//! The LLB schema, as prost messages. Tags are part of the wire format and the digests: never
//! renumber a field, only add new ones.

use serde::Serialize;

/// A sorted key/value pair (the schema has no maps, to keep the encoding canonical).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message, Serialize)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A reference to an output of an earlier op.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message, Serialize)]
pub struct Input {
    #[prost(string, tag = "1")]
    pub digest: String,
    #[prost(int64, tag = "2")]
    pub index: i64,
}

/// One vertex of the graph.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Op {
    #[prost(message, repeated, tag = "1")]
    pub inputs: Vec<Input>,
    #[prost(oneof = "op::Kind", tags = "2, 3, 4, 5, 6")]
    pub kind: Option<op::Kind>,
}

pub mod op {
    use serde::Serialize;

    #[derive(Clone, PartialEq, prost::Oneof, Serialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Kind {
        #[prost(message, tag = "2")]
        Source(super::SourceOp),
        #[prost(message, tag = "3")]
        Exec(super::ExecOp),
        #[prost(message, tag = "4")]
        File(super::FileOp),
        #[prost(message, tag = "5")]
        Merge(super::MergeOp),
        #[prost(message, tag = "6")]
        Diff(super::DiffOp),
    }
}

/// Attribute keys understood on [`SourceOp`]s.
pub mod attr {
    /// `local://` sources: JSON array of include patterns (only these paths are transferred).
    pub const INCLUDE_PATTERNS: &str = "local.includepattern";
    /// `local://` sources: JSON array of exclude patterns (`.dockerignore`).
    pub const EXCLUDE_PATTERNS: &str = "local.excludepatterns";
    /// `local://` sources: a key that makes otherwise-identical sources distinct.
    pub const SHARED_KEY: &str = "local.sharedkeyhint";
    /// `docker-image://` sources: the platform to resolve (`os/arch[/variant]`).
    pub const IMAGE_PLATFORM: &str = "image.platform";
    /// `docker-image://` sources: `"true"` forces the tag to be resolved afresh.
    pub const IMAGE_RESOLVE_PULL: &str = "image.resolvemode.pull";
    /// `git://` sources: `"true"` keeps the `.git` directory (BuildKit's `git.keepgitdir`).
    pub const GIT_KEEP_DIR: &str = "git.keepgitdir";
    /// `git://` sources: the remote as written, with its scheme (BuildKit's `git.fullurl`).
    pub const GIT_FULL_URL: &str = "git.fullurl";
}

/// A source: an image (`docker-image://REF`), a local directory (`local://NAME`), an http URL or
/// a git repository. Its output is a snapshot.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct SourceOp {
    #[prost(string, tag = "1")]
    pub identifier: String,
    /// Sorted by key.
    #[prost(message, repeated, tag = "2")]
    pub attrs: Vec<KeyValue>,
}

/// Network mode of an exec.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration, Serialize,
)]
#[repr(i32)]
pub enum NetworkMode {
    /// The host's network (BuildKit's default for builds).
    Host = 0,
    /// A fresh network namespace with only loopback.
    None = 1,
}

/// Kind of an exec mount.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration, Serialize,
)]
#[repr(i32)]
pub enum MountType {
    Bind = 0,
    Cache = 1,
    Tmpfs = 2,
    Secret = 3,
    Ssh = 4,
}

/// Run a process in a sandbox over the given mounts. Output `i` of the op is the snapshot of the
/// mount whose `output == i`.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct ExecOp {
    #[prost(message, optional, tag = "1")]
    pub meta: Option<ExecMeta>,
    #[prost(message, repeated, tag = "2")]
    pub mounts: Vec<Mount>,
    #[prost(enumeration = "NetworkMode", tag = "3")]
    pub network: i32,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct ExecMeta {
    #[prost(string, repeated, tag = "1")]
    pub args: Vec<String>,
    /// `KEY=VALUE`, in the order the image config and Dockerfile set them.
    #[prost(string, repeated, tag = "2")]
    pub env: Vec<String>,
    #[prost(string, tag = "3")]
    pub cwd: String,
    /// `user[:group]` as written in the Dockerfile; resolved against the rootfs at run time.
    #[prost(string, tag = "4")]
    pub user: String,
    #[prost(string, tag = "5")]
    pub hostname: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Mount {
    /// Index into the op's inputs, or -1 for an empty (scratch) mount.
    #[prost(int64, tag = "1")]
    pub input: i64,
    /// Sub-path of the input to mount.
    #[prost(string, tag = "2")]
    pub selector: String,
    #[prost(string, tag = "3")]
    pub dest: String,
    /// The op output this mount produces, or -1 when its changes are discarded.
    #[prost(int64, tag = "4")]
    pub output: i64,
    #[prost(bool, tag = "5")]
    pub readonly: bool,
    #[prost(enumeration = "MountType", tag = "6")]
    pub mount_type: i32,
    /// Type-specific options (cache id, sharing, tmpfs size, secret id, ...), sorted by key.
    #[prost(message, repeated, tag = "7")]
    pub options: Vec<KeyValue>,
}

impl Mount {
    /// The root filesystem mount: input `input` at `/`, producing output 0.
    pub fn rootfs(input: i64) -> Self {
        Mount {
            input,
            selector: String::new(),
            dest: "/".into(),
            output: 0,
            readonly: false,
            mount_type: MountType::Bind as i32,
            options: vec![],
        }
    }
}

/// File operations applied in order to a base (input `base`, or scratch when -1). The op has one
/// output: the result of the last action.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FileOp {
    #[prost(int64, tag = "1")]
    pub base: i64,
    #[prost(message, repeated, tag = "2")]
    pub actions: Vec<FileAction>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FileAction {
    #[prost(oneof = "file_action::Action", tags = "1, 2, 3, 4")]
    pub action: Option<file_action::Action>,
}

pub mod file_action {
    use serde::Serialize;

    #[derive(Clone, PartialEq, prost::Oneof, Serialize)]
    #[serde(rename_all = "lowercase")]
    pub enum Action {
        #[prost(message, tag = "1")]
        Copy(super::FileCopy),
        #[prost(message, tag = "2")]
        Mkfile(super::FileMkfile),
        #[prost(message, tag = "3")]
        Mkdir(super::FileMkdir),
        #[prost(message, tag = "4")]
        Rm(super::FileRm),
    }
}

/// Owner of created files: a name or a numeric id, each resolved against the base's
/// `/etc/passwd` and `/etc/group` when the op runs.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Chown {
    /// `name` or `uid`; empty for root.
    #[prost(string, tag = "1")]
    pub user: String,
    /// `name` or `gid`; empty for the user's primary group.
    #[prost(string, tag = "2")]
    pub group: String,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FileCopy {
    /// Index into the op's inputs of the copy source (-1: scratch).
    #[prost(int64, tag = "1")]
    pub src_input: i64,
    /// Source path inside the input; may contain wildcards when `allow_wildcard`.
    #[prost(string, tag = "2")]
    pub src: String,
    /// Destination path; a trailing `/` means "into this directory".
    #[prost(string, tag = "3")]
    pub dest: String,
    #[prost(message, optional, tag = "4")]
    pub owner: Option<Chown>,
    /// Permission bits to set, or -1 to keep the source's.
    #[prost(int32, tag = "5")]
    pub mode: i32,
    #[prost(bool, tag = "6")]
    pub follow_symlinks: bool,
    /// Copy a directory's contents rather than the directory itself (Dockerfile `COPY dir/ x`).
    #[prost(bool, tag = "7")]
    pub dir_contents_only: bool,
    #[prost(bool, tag = "8")]
    pub create_dest_path: bool,
    #[prost(bool, tag = "9")]
    pub allow_wildcard: bool,
    #[prost(bool, tag = "10")]
    pub allow_empty_wildcard: bool,
    #[prost(string, repeated, tag = "11")]
    pub include_patterns: Vec<String>,
    #[prost(string, repeated, tag = "12")]
    pub exclude_patterns: Vec<String>,
    /// Fixed mtime (unix seconds) for copied files, or 0 to keep the source's.
    #[prost(int64, tag = "13")]
    pub mtime: i64,
    /// `ADD`: a source file that is a tar archive (plain, gzip, bzip2, xz or zstd, recognised by
    /// its content) is unpacked into the destination directory instead of copied.
    #[prost(bool, tag = "14")]
    pub attempt_unpack: bool,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FileMkfile {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(int32, tag = "2")]
    pub mode: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
    #[prost(message, optional, tag = "4")]
    pub owner: Option<Chown>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FileMkdir {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(int32, tag = "2")]
    pub mode: i32,
    #[prost(bool, tag = "3")]
    pub make_parents: bool,
    #[prost(message, optional, tag = "4")]
    pub owner: Option<Chown>,
}

#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct FileRm {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(bool, tag = "2")]
    pub allow_not_found: bool,
    #[prost(bool, tag = "3")]
    pub allow_wildcard: bool,
}

/// Stack the inputs in order (later ones on top), as `COPY --link` does.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct MergeOp {
    #[prost(int64, repeated, tag = "1")]
    pub inputs: Vec<i64>,
}

/// The changes that turn input `lower` into input `upper`.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct DiffOp {
    #[prost(int64, tag = "1")]
    pub lower: i64,
    #[prost(int64, tag = "2")]
    pub upper: i64,
}

/// Data about an op that does not affect its result: not part of the digest.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct OpMetadata {
    #[prost(string, tag = "1")]
    pub digest: String,
    /// Step name as progress shows it, e.g. `[build 2/4] RUN make`.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Where the op came from, e.g. `Dockerfile:12`.
    #[prost(string, tag = "3")]
    pub location: String,
    /// Run even when a cached result exists (`--no-cache`).
    #[prost(bool, tag = "4")]
    pub ignore_cache: bool,
    /// Stage the op belongs to, for `--no-cache-filter`.
    #[prost(string, tag = "5")]
    pub stage: String,
}

/// A whole build graph: ops in dependency order, metadata, and the output to build.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct Definition {
    #[prost(message, repeated, tag = "1")]
    pub ops: Vec<Op>,
    #[prost(message, repeated, tag = "2")]
    pub metadata: Vec<OpMetadata>,
    /// The output to build. An empty digest means scratch (an empty filesystem).
    #[prost(message, optional, tag = "3")]
    pub root: Option<Input>,
}
