#!/usr/bin/env bash
# Container start benchmark: wall time of `kiln run --rm IMG true` on a warm store, where IMG
# was built on that store (so the run stacks the build's snapshots, unpacks nothing). The time
# covers the whole command: opening the store, resolving the image, making the container,
# starting the sandbox, exec of `true`, its exit and the removal of the container; so it is an
# upper bound of start-to-exec. With the peers set up (../shared/peers), `docker run --rm` and
# `podman run --rm` of the peers' busybox are timed in the same loop, interleaved.
#
# usage: benches/run-container.sh [--runs N] [--no-peers] [--work DIR]
#   --runs N      timed runs per tool (default 20; median and 90th percentile reported)
#   --no-peers    measure kiln only
#   --work DIR    where the store goes (default /var/tmp/kiln-bench-run)
# env: KILN (default target/release/kiln), PEERS_DIR (default ../shared/peers)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
KILN=${KILN:-$root/target/release/kiln}
PEERS_DIR=${PEERS_DIR:-$root/../shared/peers}
runs=20
use_peers=1
work=/var/tmp/kiln-bench-run
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --no-peers) use_peers=0; shift ;;
        --work) work=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "run-container.sh: unknown argument \`$1\`: see --help" >&2; exit 2 ;;
    esac
done

die() { echo "run-container.sh: error: $*" >&2; exit 1; }
[ -x "$KILN" ] || die "no kiln binary at \`$KILN\`: build it (\`cargo build --release -p kiln\`) or set KILN"
[ "$(id -u)" = 0 ] || die "run as root: kiln's sandbox needs namespaces and overlayfs"

rm -rf "$work"
mkdir -p "$work"
export KILN_ROOT=$work/store
sh "$root/testdata/make-busybox-rootfs.sh" "$work/rootfs" >/dev/null
"$KILN" import --change 'CMD ["sh"]' "$work/rootfs" busybox:latest >/dev/null
mkdir -p "$work/ctx"
printf 'FROM busybox\nRUN echo built > /built\n' >"$work/ctx/Dockerfile"
"$KILN" build --progress plain -t bench-run "$work/ctx" >/dev/null 2>&1
"$KILN" run --rm bench-run true # warm-up, untimed

tools=(kiln)
if [ "$use_peers" = 1 ] && [ -f "$PEERS_DIR/env.sh" ]; then
    # shellcheck source=/dev/null
    . "$PEERS_DIR/env.sh"
    if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1 || "$DOCKER" pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
        "$DOCKER" run --rm "$BASE_IMAGE" true && tools+=(docker)
    fi
    if command -v podman >/dev/null && { podman image exists "$BASE_IMAGE" || podman pull -q --tls-verify=false "$BASE_IMAGE" >/dev/null 2>&1; }; then
        podman run --rm "$BASE_IMAGE" true && tools+=(podman)
    fi
fi

one() {
    case $1 in
        kiln) "$KILN" run --rm bench-run true ;;
        docker) "$DOCKER" run --rm "$BASE_IMAGE" true ;;
        podman) podman run --rm "$BASE_IMAGE" true ;;
    esac
}

results=$work/results.tsv
: >"$results"
for ((i = 1; i <= runs; i++)); do
    for tool in "${tools[@]}"; do
        t0=$(date +%s%N)
        one "$tool" >/dev/null
        t1=$(date +%s%N)
        printf '%s\t%s\n' "$tool" "$(((t1 - t0) / 1000))" >>"$results"
    done
done
for tool in "${tools[@]}"; do
    awk -F'\t' -v t="$tool" '$1 == t { print $2 }' "$results" | sort -n | awk -v t="$tool" '
        { v[NR] = $1 }
        END { printf "%-7s median %7.1f ms   p90 %7.1f ms   (%d runs)\n", t, v[int((NR + 1) / 2)] / 1000, v[int(NR * 0.9 + 0.5)] / 1000, NR }'
done
