#!/usr/bin/env bash
# Two-platform benchmark (issue 17): `run.sh --cases multiplatform`, kept under its old name.
# One build for linux/amd64 and linux/arm64 of a Dockerfile with a cross-compiled stage and
# emulated arm64 `RUN`s, by kiln and by BuildKit v0.11.6 with the same QEMU handlers,
# interleaved; prints the wall times, kiln/BuildKit and each tool's emulated share (see
# run.sh and README.md here).
#
# usage: benches/multiplatform.sh [--runs N] [--work DIR]
# env: KILN (default target/release/kiln), PEERS_DIR (default ../shared/peers beside the
#      workspace). Needs root, the peers' registry (127.0.0.1:5000), buildkitd, QEMU's handlers
#      (`kiln setup emulators`) and the arm64 busybox of `cargo xtask setup`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
runs=3
work=/var/tmp/kiln-bench-multiplatform
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "multiplatform.sh: unknown argument \`$1\`: see --help" >&2; exit 2 ;;
    esac
done
exec "$here/run.sh" --cases multiplatform --runs "$runs" --work "$work"
