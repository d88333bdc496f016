//! kiln's gRPC API: the messages and services of `proto/kiln/v1/*.proto`, generated at build
//! time. The daemon (`kiln-daemon`) serves them and `kiln-client` calls them.

// Only the generated code names these, which the workspace's unused-dependency check cannot see.
use prost as _;
use tonic_prost as _;

/// The `kiln.v1` package: every service of the daemon.
// Generated code: a message's oneof holds its variants inline (the build session's first
// message is large, and sent once).
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("kiln.v1");
}
