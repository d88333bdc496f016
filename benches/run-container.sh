#!/usr/bin/env bash
# Container start benchmark: `kiln run --rm IMG /now` on a warm store, where IMG was built on
# that store (so the run stacks the build's snapshots, unpacks nothing) and `/now` is a tiny
# static program (compiled here with gcc) that prints the wall clock in nanoseconds and exits,
# like `true`. Two figures per run:
#   start-to-exec  from just before `kiln run` is started to the moment `/now` runs in the
#                  container (opening the store, resolving the image, making the container,
#                  starting the sandbox, exec);
#   total          the whole command, with the container's exit and removal.
# With the peers set up (../shared/peers), `docker run --rm` and `podman run --rm` of the same
# image (pushed to the peers' registry) are timed in the same loop, interleaved.
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
command -v gcc >/dev/null || die "gcc is missing (it compiles /now): run \`apt-get install gcc libc6-dev\`"
cat >"$work/now.c" <<'C'
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    printf("%lld\n", (long long)t.tv_sec * 1000000000LL + t.tv_nsec);
    return 0;
}
C
gcc -O2 -static -o "$work/ctx/now" "$work/now.c"
printf 'FROM busybox\nCOPY now /now\nRUN echo built > /built\n' >"$work/ctx/Dockerfile"
"$KILN" build --progress plain -t bench-run "$work/ctx" >/dev/null 2>&1
"$KILN" run --rm bench-run /now >/dev/null # warm-up, untimed

tools=(kiln)
if [ "$use_peers" = 1 ] && [ -f "$PEERS_DIR/env.sh" ]; then
    # shellcheck source=/dev/null
    . "$PEERS_DIR/env.sh"
    peer_image=$REGISTRY/kiln-bench-run:latest
    if "$KILN" push "bench-run" "$peer_image" >/dev/null 2>&1; then
        if "$DOCKER" pull -q "$peer_image" >/dev/null 2>&1 && "$DOCKER" run --rm "$peer_image" /now >/dev/null; then
            tools+=(docker)
        fi
        if command -v podman >/dev/null && podman pull -q --tls-verify=false "$peer_image" >/dev/null 2>&1 &&
            podman run --rm "$peer_image" /now >/dev/null; then
            tools+=(podman)
        fi
    fi
fi

one() {
    case $1 in
        kiln) "$KILN" run --rm bench-run /now ;;
        docker) "$DOCKER" run --rm "$peer_image" /now ;;
        podman) podman run --rm "$peer_image" /now ;;
    esac
}

results=$work/results.tsv
: >"$results"
for ((i = 1; i <= runs; i++)); do
    for tool in "${tools[@]}"; do
        t0=$(date +%s%N)
        at=$(one "$tool")
        t1=$(date +%s%N)
        printf '%s\t%s\t%s\n' "$tool" "$(((at - t0) / 1000))" "$(((t1 - t0) / 1000))" >>"$results"
    done
done
for tool in "${tools[@]}"; do
    for col in 2 3; do
        what=start-to-exec
        [ "$col" = 3 ] && what=total
        awk -F'\t' -v t="$tool" -v c="$col" '$1 == t { print $c }' "$results" | sort -n | awk -v t="$tool" -v w="$what" '
            { v[NR] = $1 }
            END { printf "%-7s %-14s median %7.1f ms   p90 %7.1f ms   (%d runs)\n", t, w, v[int((NR + 1) / 2)] / 1000, v[int(NR * 0.9 + 0.5)] / 1000, NR }'
    done
done
