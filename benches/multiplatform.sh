#!/usr/bin/env bash
# Two-platform benchmark (issue 17): one build for linux/amd64 and linux/arm64 of a Dockerfile
# with a cross-compiled stage (`FROM --platform=$BUILDPLATFORM`: one step shared by both
# targets, one per target, all native) and a final stage whose `RUN`s are emulated by QEMU for
# arm64, by kiln and by BuildKit v0.11.6 (../shared/peers/buildkit.sh) with the same binfmt_misc
# handlers, interleaved (each run builds with kiln, then BuildKit). Cold builds: kiln from a
# fresh store holding only the base index, BuildKit with `--no-cache`; both keep the result
# locally (kiln `-t`, BuildKit `type=image`). Prints the median wall time per tool, the ratio
# kiln/BuildKit, and the emulated share: the summed time of the arm64 `RUN` steps of the final
# stage over the summed time of every step, from each tool's plain progress (`#N DONE 1.2s`).
#
# usage: benches/multiplatform.sh [--runs N] [--work DIR]
# env: KILN (default target/release/kiln), PEERS_DIR (default ../shared/peers beside the
#      workspace). Needs root, the peers' registry (127.0.0.1:5000), buildkitd, QEMU's handlers
#      (`kiln setup emulators`) and the arm64 busybox of `cargo xtask setup`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
KILN=${KILN:-$root/target/release/kiln}
PEERS_DIR=${PEERS_DIR:-$root/../shared/peers}
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
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$KILN" ] || die "no kiln binary at \`$KILN\`: run \`cargo build --release -p kiln\` or set KILN"
[ "$(id -u)" = 0 ] || die "run as root: kiln's sandbox needs namespaces and overlayfs"
[ -f "$PEERS_DIR/env.sh" ] || die "no $PEERS_DIR/env.sh: set PEERS_DIR"
# shellcheck source=/dev/null
. "$PEERS_DIR/env.sh"
[ -x "$BUILDCTL" ] && "$BUILDCTL" debug workers >/dev/null 2>&1 ||
    die "buildkitd does not answer at $BUILDKIT_HOST: run $PEERS_DIR/buildkit.sh"
arm64_busybox=${KILN_TEST_ARM64_BUSYBOX:-/usr/local/lib/kiln-test/arm64/busybox}
[ -x "$arm64_busybox" ] || die "no arm64 busybox at $arm64_busybox: run \`cargo xtask setup\`"

mkdir -p "$work/logs"
base=$REGISTRY/kiln-bench/busybox-multi:latest
# ---------------------------------------------------------------- the base index
# Debian's busybox-static for amd64 and arm64 as one index in the peers' registry, made (and
# pushed) by kiln itself, untimed: both tools pull their base from there.
if ! skopeo inspect --raw --tls-verify=false "docker://$base" 2>/dev/null | grep -q arm64; then
    log "pushing the two-platform base $base"
    seed=$work/seed
    rm -rf "$seed"; mkdir -p "$seed/ctx"
    sh "$root/testdata/make-busybox-rootfs.sh" "$seed/amd64"
    BUSYBOX=$arm64_busybox BUSYBOX_EMULATOR=/usr/bin/qemu-aarch64-static \
        sh "$root/testdata/make-busybox-rootfs.sh" "$seed/arm64"
    export KILN_ROOT=$seed/store
    "$KILN" import --change 'CMD ["sh"]' "$seed/amd64" bb-amd64 >/dev/null
    "$KILN" import --platform linux/arm64 --change 'CMD ["sh"]' "$seed/arm64" bb-arm64 >/dev/null
    echo 'FROM bb-$TARGETARCH' >"$seed/ctx/Dockerfile"
    "$KILN" build --progress plain --platform linux/amd64,linux/arm64 \
        -o "type=registry,name=$base" "$seed/ctx" >"$work/logs/seed.log" 2>&1 ||
        die "cannot push the base: see $work/logs/seed.log"
    unset KILN_ROOT
fi

# ---------------------------------------------------------------- the context
ctx=$work/ctx
mkdir -p "$ctx"
# awk loops of one core each: 1,000,000 iterations take ~0.4 s natively here, ~4 s emulated.
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
ARG BASE
FROM --platform=$BUILDPLATFORM $BASE AS build
# Shared by both targets: runs once, natively.
RUN awk 'BEGIN { for (i = 0; i < 3000000; i++) s += i; print "deps", s }' > /deps
ARG TARGETARCH
# "Cross-compiles" for each target, natively.
RUN awk 'BEGIN { for (i = 0; i < 3000000; i++) s += 2 * i; print "tool", s }' > /tool && echo "$TARGETARCH" >> /tool
FROM $BASE
COPY --from=build /deps /tool /opt/
# Emulated for arm64.
RUN awk 'BEGIN { for (i = 0; i < 300000; i++) s += i; print s }' > /emulated-loop
RUN head -c 8388608 /dev/zero | sha256sum > /emulated-hash
RUN uname -m > /arch
DOCKERFILE

results=$work/results.tsv
: >"$results"
platforms=linux/amd64,linux/arm64
# measure TOOL RUN CMD...: times CMD; appends "TOOL MS EMULATED_S STEPS_S" to the results.
measure() {
    local tool=$1 run=$2; shift 2
    local logf="$work/logs/$tool-$run.log" t0 t1 ms
    t0=$(date +%s%N)
    "$@" >"$logf" 2>&1 || { log "$tool run $run FAILED; the end of $logf:"; tail -15 "$logf" >&2; exit 1; }
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    # Step names by vertex number and each vertex's last DONE time (BuildKit repeats a vertex's
    # DONE line as its progress is redrawn): emulated = the arm64 RUNs of the final stage.
    read -r emu all < <(awk '
        /^#[0-9]+ \[/ { n = $1; name[n] = $0 }
        /^#[0-9]+ DONE [0-9.]+s$/ { t = $3; sub(/s$/, "", t); done[$1] = t }
        END { for (v in done) { all += done[v]
                  if (name[v] ~ /\[linux\/arm64 stage-1 [0-9]+\/[0-9]+\] RUN/) emu += done[v] }
              printf "%.2f %.2f\n", emu, all }' "$logf")
    printf '%s\t%s\t%s\t%s\n' "$tool" "$ms" "$emu" "$all" >>"$results"
    log "$(printf '%-9s run %s: %6d ms (arm64 RUN steps %ss of %ss of steps)' "$tool" "$run" "$ms" "$emu" "$all")"
}

for run in $(seq 1 "$runs"); do
    store=$work/store
    rm -rf "$store"
    KILN_ROOT=$store "$KILN" pull --all-platforms "$base" >/dev/null 2>&1 ||
        die "kiln cannot pull \`$base\`"
    measure kiln "$run" env KILN_ROOT="$store" "$KILN" build --progress plain \
        --platform "$platforms" --build-arg "BASE=$base" -t bench-multiplatform "$ctx"
    measure buildkit "$run" "$BUILDCTL" build --progress plain --no-cache \
        --frontend dockerfile.v0 --local context="$ctx" --local dockerfile="$ctx" \
        --opt platform="$platforms" --opt build-arg:BASE="$base" \
        --output type=image,name=bench-multiplatform
done
rm -rf "$work/store"

echo
awk -F'\t' '
function median(list,   n, a, i, j, x) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { x = a[i]; j = i - 1; while (j > 0 && a[j] + 0 > x + 0) { a[j + 1] = a[j]; j-- } a[j + 1] = x }
    if (n % 2) return a[(n + 1) / 2]
    return (a[n / 2] + a[n / 2 + 1]) / 2
}
{ ms[$1] = ms[$1] " " $2; emu[$1] = emu[$1] " " $3; all[$1] = all[$1] " " $4 }
END {
    printf "%-10s %10s %16s %14s\n", "tool", "wall s", "arm64 RUNs s", "emulated share"
    for (t in ms) {
        em = median(emu[t]); st = median(all[t])
        printf "%-10s %10.3f %16.2f %13.0f%%\n", t, median(ms[t]) / 1000, em, (st > 0 ? 100 * em / st : 0)
    }
    if (("kiln" in ms) && ("buildkit" in ms))
        printf "kiln/BuildKit: %.3fx\n", median(ms["kiln"]) / median(ms["buildkit"])
}' "$results" | tee "$work/results.txt"
echo "(median of $runs interleaved runs; emulated share: summed arm64 RUN step time of the final stage over summed step time; raw: $results; logs: $work/logs)"
