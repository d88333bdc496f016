#!/usr/bin/env bash
# kiln through its daemon (`kiln --host`) against embedded kiln and BuildKit (`buildctl`), in one
# interleaved run: every iteration runs each tool once, so a noisy machine hurts all alike.
#   noop:        manyfiles rebuilt with nothing changed (after one untimed build per tool)
#   incremental: one file of manyfiles rewritten, then every tool rebuilds
#   chain x8:    (after the runs above) 8 clients build the chain case (40 RUN steps) at once
#                from an empty build cache
#                (`kiln --host prune --all`, `buildctl prune --all`, untimed), as 8 `kiln --host`
#                processes against 8 `buildctl` processes; the time is until the last one ends
#   daemon RSS:  VmRSS of the daemon (/proc/PID/status) idle after start, and after 40 builds
# Prints the median wall time per case and tool, and the ratios.
#
# usage: benches/daemon.sh [--runs N] [--work DIR]
#   --runs N    timed runs per case and tool (default 5; the median is reported)
#   --work DIR  contexts, stores, logs (default /var/tmp/kiln-bench-daemon)
# env: KILN (default target/release/kiln), PEERS_DIR (default ../shared/peers beside the
#      workspace; BuildKit from its buildkit.sh must be running), BASE_IMAGE.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
KILN=${KILN:-$root/target/release/kiln}
PEERS_DIR=${PEERS_DIR:-$root/../shared/peers}
runs=5
work=/var/tmp/kiln-bench-daemon
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "daemon.sh: unknown argument \`$1\`: see --help" >&2; exit 2 ;;
    esac
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$KILN" ] || die "no kiln binary at \`$KILN\`: run \`cargo build --release -p kiln\` or set KILN"
[ "$(id -u)" = 0 ] || die "run as root: kiln's sandbox needs namespaces and overlayfs"
# shellcheck source=/dev/null
[ -f "$PEERS_DIR/env.sh" ] && . "$PEERS_DIR/env.sh"
BASE_IMAGE=${BASE_IMAGE:-127.0.0.1:5000/busybox:latest}
[ -n "${BUILDCTL:-}" ] && timeout 60 "$BUILDCTL" debug workers >/dev/null 2>&1 ||
    die "BuildKit is not running: start it with $PEERS_DIR/buildkit.sh"

mkdir -p "$work/logs"
ctx="$work/ctx"
log "generating contexts in $ctx"
"$here/gen.sh" "$ctx" "$BASE_IMAGE" >/dev/null
results="$work/results.tsv"
: >"$results"
embedded="$work/store-embedded"
served="$work/store-daemon"
sock="$work/kiln.sock"
host="unix://$sock"
# The last run's stores are set aside and deleted at the end: deleting 20,000 files first would
# slow the disk for the timed builds.
for s in "$embedded" "$served"; do
    if [ -d "$s" ]; then mv "$s" "$work/old-$(basename "$s")-$(date +%s%N)"; fi
done
for s in "$embedded" "$served"; do
    KILN_ROOT=$s "$KILN" pull "$BASE_IMAGE" >/dev/null 2>&1 || die "kiln cannot pull \`$BASE_IMAGE\`"
done

KILN_ROOT=$served "$KILN" daemon --addr "$host" 2>"$work/logs/daemon.log" &
daemon=$!
stop_daemon() { kill -TERM "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null || true; }
trap stop_daemon EXIT
for _ in $(seq 100); do [ -S "$sock" ] && "$KILN" --host "$host" version >/dev/null 2>&1 && break; sleep 0.1; done
"$KILN" --host "$host" version >/dev/null || die "the daemon did not start: see $work/logs/daemon.log"
sleep 1
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$daemon/status"; }
idle_rss=$(rss_kb)
builds=0

# measure TOOL CASE RUN CMD...: appends "TOOL CASE MS" to the results.
measure() {
    local tool=$1 case=$2 run=$3; shift 3
    local logf="$work/logs/$case-$tool-$run.log" t0 t1
    t0=$(date +%s%N)
    if ! "$@" >"$logf" 2>&1; then
        log "$tool $case run $run FAILED; the end of $logf:"; tail -15 "$logf" >&2
        printf '%s\t%s\tFAIL\n' "$tool" "$case" >>"$results"; return 0
    fi
    t1=$(date +%s%N)
    printf '%s\t%s\t%s\n' "$tool" "$case" "$(((t1 - t0) / 1000000))" >>"$results"
    log "$(printf '%-9s %-12s run %s: %6d ms' "$tool" "$case" "$run" "$(((t1 - t0) / 1000000))")"
}
kiln_embedded() { KILN_ROOT=$embedded "$KILN" build --progress plain "$@"; }
kiln_daemon() { builds=$((builds + 1)); "$KILN" --host "$host" build --progress plain "$@"; }
buildkit() { # buildkit CONTEXT NAME
    "$BUILDCTL" build --progress plain --frontend dockerfile.v0 --local "context=$1" \
        --local "dockerfile=$1" --output "type=image,name=$2"
}
many="$ctx/manyfiles"
log "warming up: one untimed manyfiles build per tool"
kiln_embedded -t bench-warm "$many" >"$work/logs/warm-embedded.log" 2>&1 || die "see $work/logs/warm-embedded.log"
kiln_daemon -t bench-warm "$many" >"$work/logs/warm-daemon.log" 2>&1 || die "see $work/logs/warm-daemon.log"
buildkit "$many" bench-warm >"$work/logs/warm-buildkit.log" 2>&1 || die "see $work/logs/warm-buildkit.log"

chain8_daemon() {
    local pids=() i
    for i in $(seq 8); do "$KILN" --host "$host" build --progress plain -t "bench-chain-$i" "$ctx/chain" & pids+=($!); done
    local rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done; return $rc
}
chain8_buildkit() {
    local pids=() i
    for i in $(seq 8); do buildkit "$ctx/chain" "bench-chain-$i" & pids+=($!); done
    local rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done; return $rc
}

for run in $(seq "$runs"); do
    measure embedded noop "$run" kiln_embedded -t bench-warm "$many"
    measure daemon noop "$run" kiln_daemon -t bench-warm "$many"
    measure buildkit noop "$run" buildkit "$many" bench-warm
    head -c 5000 /dev/urandom >"$many/data/d42/f100"
    measure embedded incremental "$run" kiln_embedded -t bench-warm "$many"
    measure daemon incremental "$run" kiln_daemon -t bench-warm "$many"
    measure buildkit incremental "$run" buildkit "$many" bench-warm
done
# After noop and incremental: the prunes that empty the build cache for chain would empty it
# for them too.
for run in $(seq "$runs"); do
    "$KILN" --host "$host" prune --all >/dev/null
    "$BUILDCTL" prune --all >/dev/null 2>&1
    measure daemon chain-x8 "$run" chain8_daemon
    builds=$((builds + 8))
    measure buildkit chain-x8 "$run" chain8_buildkit
done
while [ "$builds" -lt 40 ]; do
    kiln_daemon -t bench-warm "$many" >/dev/null 2>&1 || die "a top-up build through the daemon failed"
done
busy_rss=$(rss_kb)

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else print a[int((NR + 1) / 2)] }'; }
med() { awk -v t="$1" -v c="$2" '$1 == t && $2 == c && $3 != "FAIL" { print $3 }' "$results" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b }'; }
printf '\n%-12s %10s %10s %10s %14s %14s\n' CASE embedded daemon buildkit daemon/buildkit daemon/embedded
for c in noop incremental chain-x8; do
    e=$(med embedded "$c"); d=$(med daemon "$c"); b=$(med buildkit "$c")
    printf '%-12s %10s %10s %10s %14s %14s\n' "$c" "$e" "$d" "$b" "$(ratio "$d" "$b")" "$(ratio "$d" "$e")"
done
printf '(median ms of %s runs)\n' "$runs"
stop_daemon
rm -rf "$work"/old-store-* &
printf 'daemon RSS: idle %s MiB, after %s builds %s MiB\n' \
    "$(awk -v k="$idle_rss" 'BEGIN { printf "%.1f", k / 1024 }')" "$builds" \
    "$(awk -v k="$busy_rss" 'BEGIN { printf "%.1f", k / 1024 }')"
