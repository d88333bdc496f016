#!/usr/bin/env bash
# Whole-build benchmark of kiln, and of the peers (Buildah, Docker's legacy builder, and BuildKit
# for the cases that say so) when ../shared/peers is set up, on the same cases in the same run, interleaved: every iteration runs
# each tool once, so a noisy disk hurts all of them alike. Prints median wall time and peak
# memory per case and tool, and the ratios kiln/peer.
#
# usage: benches/run.sh [--runs N] [--cases LIST] [--no-peers] [--work DIR] [--keep]
#   --runs N      timed runs per case and tool (default 3; the median is reported)
#   --cases LIST  comma-separated subset of (default all but multiplatform):
#                 manyfiles,noop,incremental,parallel,chain,bigfile,target,incremental-bind,ci,
#                 multiplatform
#   --no-peers    measure kiln only
#   --work DIR    where contexts, stores and logs go (default /var/tmp/kiln-bench)
# env: KILN (the kiln binary; `cargo xtask bench` passes target/release/kiln), PEERS_DIR
#      (default ../shared/peers beside the workspace), BASE_IMAGE (default the peers' busybox).
#
# What each tool is asked to do:
#   cold cases (manyfiles, parallel, chain, bigfile, target): kiln starts from a fresh store
#     holding only the pulled base image (the pull is not timed), so nothing is cached, not even
#     context checksums; Buildah and Docker build with `--no-cache`;
#   noop: the manyfiles build again with nothing changed (after one untimed warm-up build);
#   incremental: one file of manyfiles is rewritten before each iteration, then every tool
#     rebuilds;
#   parallel: kiln with its default `--jobs` and again with `--jobs 1`; Buildah with `--jobs 6`;
#   bigfile: the build plus writing the image as a tar (kiln `-o type=oci`, `buildah push
#     oci-archive:`, `docker save`);
#   incremental-bind: after one untimed build, one source file is rewritten before each
#     iteration and every tool rebuilds; its `RUN --mount=type=bind,source=package-lock.json`
#     step (2 s) should stay cached. Kiln, Buildah and BuildKit (`buildctl`, image output into
#     its own store); Docker's legacy builder has no `RUN --mount`.
#   ci: kiln and BuildKit only, every step from an empty store (a new kiln store; `buildctl
#     prune --all`, untimed): ci-export builds the three-stage ci context and exports its cache
#     (mode=max) to the registry; ci-cached rebuilds it from that cache and pushes the image;
#     ci-changed does the same after one source file was rewritten. Each run and tool uses its
#     own repositories, so every push uploads every blob.
#   multiplatform: kiln and BuildKit only, one cold build for linux/amd64,linux/arm64 (kiln from
#     a fresh store holding only the base index, BuildKit `--no-cache`), the arm64 `RUN`s of the
#     final stage emulated by the host's QEMU binfmt_misc handlers (`kiln setup emulators`); the
#     base index (Debian's busybox-static for both) is pushed once, untimed, by kiln. Also
#     prints each tool's emulated share. Needs the arm64 busybox of `cargo xtask setup`.
# Peak memory is the largest resident set among the timed command's own processes (GNU time's
# %M); the peers' daemons (dockerd) are not in it.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
KILN=${KILN:-$root/target/release/kiln}
PEERS_DIR=${PEERS_DIR:-$root/../shared/peers}
runs=3
cases=manyfiles,noop,incremental,parallel,chain,bigfile,target,incremental-bind,ci
use_peers=1
work=/var/tmp/kiln-bench
keep=0
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --cases) cases=$2; shift 2 ;;
        --no-peers) use_peers=0; shift ;;
        --work) work=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument \`$1\`: see --help" >&2; exit 2 ;;
    esac
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$KILN" ] || die "no kiln binary at \`$KILN\`: run \`cargo xtask bench\` or set KILN"
[ -x /usr/bin/time ] || die "GNU time is missing: run \`apt-get install time\` (or \`cargo xtask setup\`)"
[ "$(id -u)" = 0 ] || die "run as root: kiln's sandbox needs namespaces and overlayfs"

# ---------------------------------------------------------------- peers
tools=(kiln)
if [ -f "$PEERS_DIR/env.sh" ]; then
    # shellcheck source=/dev/null
    . "$PEERS_DIR/env.sh"
fi
BASE_IMAGE=${BASE_IMAGE:-127.0.0.1:5000/busybox:latest}
if [ "$use_peers" = 1 ]; then
    if declare -F peers_buildah >/dev/null && peers_buildah inspect -t image "$BASE_IMAGE" >/dev/null 2>&1; then
        tools+=(buildah)
    else
        log "Buildah or its base image is not set up: run $PEERS_DIR/setup.sh to compare with it"
    fi
    if declare -F peers_docker >/dev/null && peers_docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        tools+=(docker)
    else
        log "Docker is not set up: run $PEERS_DIR/setup.sh to compare with it"
    fi
    # BuildKit measures only the cases it is listed for (see `bk_cases`).
    if [ -n "${BUILDCTL:-}" ] && [ -x "$BUILDCTL" ] && timeout 60 "$BUILDCTL" debug workers >/dev/null 2>&1; then
        tools+=(buildkit)
    else
        log "BuildKit is not running: start it with $PEERS_DIR/buildkit.sh to compare with it"
    fi
fi
bk_cases=" incremental-bind ci multiplatform "
curl -fsS -o /dev/null --max-time 3 "http://${BASE_IMAGE%%/*}/v2/" 2>/dev/null ||
    die "no registry answers for \`$BASE_IMAGE\`: run $PEERS_DIR/setup.sh (or set BASE_IMAGE)"

mkdir -p "$work/logs"
ctx="$work/ctx"
log "generating contexts in $ctx"
contexts=$(echo ",$cases," | sed 's/,noop,/,manyfiles,/; s/,incremental,/,manyfiles,/; s/,ci,/,manyfiles,ci,/; s/^,//; s/,$//')
"$here/gen.sh" "$ctx" "$BASE_IMAGE" "$contexts"
results="$work/results.tsv"
: >"$results"
emulated="$work/emulated.tsv"
: >"$emulated"

# ---------------------------------------------------------------- running and timing
# measure TOOL CASE RUN CMD...: runs CMD, appends "TOOL CASE MS KB" to the results.
measure() {
    local tool=$1 case=$2 run=$3; shift 3
    local logf="$work/logs/$case-$tool-$run.log" t0 t1 ms kb
    t0=$(date +%s%N)
    if ! /usr/bin/time -f '%M' -o "$work/rss" "$@" >"$logf" 2>&1; then
        log "$tool $case run $run FAILED; the end of $logf:"
        tail -15 "$logf" >&2
        printf '%s\t%s\tFAIL\tFAIL\n' "$tool" "$case" >>"$results"
        return 0
    fi
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    kb=$(tail -1 "$work/rss")
    printf '%s\t%s\t%s\t%s\n' "$tool" "$case" "$ms" "$kb" >>"$results"
    log "$(printf '%-9s %-12s run %s: %6d ms, %4d MB peak' "$tool" "$case" "$run" "$ms" "$((kb / 1024))")"
}

kiln_store() { echo "$work/store-$1"; }
# A store holding only the base image: nothing else is cached. The previous run's store is set
# aside, not deleted: ext4 allocates inodes slowly right after 20,000 were freed, which would
# time the deletion, not the build; the old stores are deleted after the case.
kiln_fresh() {
    local s
    s=$(kiln_store "$1")
    if [ -d "$s" ]; then mv "$s" "$work/old-store-$1-$(date +%s%N)"; fi
    KILN_ROOT=$s "$KILN" pull "$BASE_IMAGE" >/dev/null 2>&1 ||
        die "kiln cannot pull \`$BASE_IMAGE\`: see \`KILN_ROOT=$s $KILN pull $BASE_IMAGE\`"
}
kiln_build() { # kiln_build STORE CONTEXT ARGS...
    local s c
    s=$(kiln_store "$1"); c=$2; shift 2
    KILN_ROOT=$s "$KILN" build --progress plain "$@" "$c"
}
buildah_build() { # buildah_build CONTEXT ARGS...
    local c=$1; shift
    peers_buildah bud --isolation=oci --runtime=runc --layers "$@" "$c"
}
docker_build() { # docker_build CONTEXT ARGS...
    local c=$1; shift
    "$DOCKER" build --rm "$@" "$c"
}
buildkit_build() { # buildkit_build CONTEXT NAME: the image goes to BuildKit's own store
    "$BUILDCTL" build --progress plain --frontend dockerfile.v0 --local "context=$1" \
        --local "dockerfile=$1" --output "type=image,name=$2"
}
# The registry of the ci case's cache and images, and a stamp keeping this run's repositories
# apart from earlier runs' (a blob already in a repository is not uploaded again).
ci_registry=${BASE_IMAGE%%/*}
ci_stamp=$(date +%s)
kiln_empty() { # a new, empty store: not even the base image
    local s
    s=$(kiln_store "$1")
    if [ -d "$s" ]; then mv "$s" "$work/old-store-$1-$(date +%s%N)"; fi
    mkdir -p "$s"
}
buildkit_ci() { # buildkit_ci CONTEXT ARGS...: a build of the ci case, result and cache per ARGS
    local c=$1; shift
    "$BUILDCTL" build --progress plain --frontend dockerfile.v0 --local "context=$c" \
        --local "dockerfile=$c" "$@"
}
buildkit_empty() {
    "$BUILDCTL" prune --all >/dev/null 2>&1 || die "\`$BUILDCTL prune --all\` failed"
}
# The multiplatform case: its platforms and its base, an index of Debian's busybox-static for
# amd64 and arm64 in the peers' registry.
mp_platforms=linux/amd64,linux/arm64
mp_base=${BASE_IMAGE%%/*}/kiln-bench/busybox-multi:latest
mp_seed() { # pushes the base index with kiln, untimed, unless the registry has it
    local seed=$work/mp-seed arm64_busybox=${KILN_TEST_ARM64_BUSYBOX:-/usr/local/lib/kiln-test/arm64/busybox}
    if skopeo inspect --raw --tls-verify=false "docker://$mp_base" 2>/dev/null | grep -q arm64; then
        return 0
    fi
    [ -x "$arm64_busybox" ] || die "no arm64 busybox at $arm64_busybox: run \`cargo xtask setup\`"
    log "pushing the two-platform base $mp_base"
    rm -rf "$seed"; mkdir -p "$seed/ctx"
    sh "$root/testdata/make-busybox-rootfs.sh" "$seed/amd64"
    BUSYBOX=$arm64_busybox BUSYBOX_EMULATOR=/usr/bin/qemu-aarch64-static \
        sh "$root/testdata/make-busybox-rootfs.sh" "$seed/arm64"
    {
        KILN_ROOT=$seed/store "$KILN" import --change 'CMD ["sh"]' "$seed/amd64" bb-amd64 &&
        KILN_ROOT=$seed/store "$KILN" import --platform linux/arm64 --change 'CMD ["sh"]' "$seed/arm64" bb-arm64 &&
        echo 'FROM bb-$TARGETARCH' >"$seed/ctx/Dockerfile" &&
        KILN_ROOT=$seed/store "$KILN" build --progress plain --platform "$mp_platforms" \
            -o "type=registry,name=$mp_base" "$seed/ctx"
    } >"$work/logs/mp-seed.log" 2>&1 || die "cannot push the base: see $work/logs/mp-seed.log"
    rm -rf "$seed"
}
kiln_fresh_multi() { # a store holding only the base index
    local s
    s=$(kiln_store "$1")
    if [ -d "$s" ]; then mv "$s" "$work/old-store-$1-$(date +%s%N)"; fi
    KILN_ROOT=$s "$KILN" pull --all-platforms "$mp_base" >/dev/null 2>&1 ||
        die "kiln cannot pull \`$mp_base\`: see \`KILN_ROOT=$s $KILN pull --all-platforms $mp_base\`"
}
buildkit_multi() { # buildkit_multi CONTEXT BASE PLATFORMS: nothing cached, image into its store
    "$BUILDCTL" build --progress plain --no-cache --frontend dockerfile.v0 --local "context=$1" \
        --local "dockerfile=$1" --opt "platform=$3" --opt "build-arg:BASE=$2" \
        --output type=image,name=bench-multiplatform
}
# mp_emulated TOOL LOG: appends "TOOL EMULATED_S STEPS_S" from the plain progress in LOG: the
# summed last DONE time of the final stage's arm64 `RUN` steps (BuildKit repeats a vertex's
# DONE line as its progress is redrawn) and of every step. Both builders name those steps
# `[linux/arm64 stage-1 N/M] RUN ...`.
mp_emulated() {
    [ -f "$2" ] || return 0
    awk -v tool="$1" '
        /^#[0-9]+ \[/ { n = $1; name[n] = $0 }
        /^#[0-9]+ DONE [0-9.]+s$/ { t = $3; sub(/s$/, "", t); done[$1] = t }
        END { for (v in done) { all += done[v]
                  if (name[v] ~ /\[linux\/arm64 stage-1 [0-9]+\/[0-9]+\] RUN/) emu += done[v] }
              printf "%s\t%.2f\t%.2f\n", tool, emu, all }' "$2" >>"$emulated"
}
# The timed commands run in `bash -c` under GNU time: they need these functions and settings.
export -f kiln_build buildah_build docker_build buildkit_build buildkit_ci buildkit_multi kiln_store
if declare -F peers_buildah >/dev/null; then export -f peers_buildah; fi
export KILN work DOCKER PEERS_BUILDAH_ROOT PEERS_BUILDAH_RUNROOT BUILDCTL BUILDKIT_HOST

peer_cleanup() { # drop the images a cold case made, so the disk does not fill up
    case $1 in
        buildah) peers_buildah rmi -f "bench-$2" >/dev/null 2>&1 || true
                 peers_buildah rmi --prune >/dev/null 2>&1 || true ;;
        docker) "$DOCKER" rmi -f "bench-$2" >/dev/null 2>&1 || true
                "$DOCKER" image prune -f >/dev/null 2>&1 || true ;;
    esac
}

# run_cold CASE RUN TOOL [EXTRA ARGS]: a build with nothing cached.
run_cold() {
    local case=$1 run=$2 tool=$3 c="$ctx/$1"; shift 3
    case $tool in
        kiln) kiln_fresh kiln; measure kiln "$case" "$run" bash -c 'kiln_build kiln "$@"' _ "$c" -t "bench-$case" "$@" ;;
        kiln-j1) kiln_fresh kiln-j1; measure kiln-j1 "$case" "$run" bash -c 'kiln_build kiln-j1 "$@"' _ "$c" -t "bench-$case" --jobs 1 "$@" ;;
        buildah) measure buildah "$case" "$run" bash -c 'buildah_build "$@"' _ "$c" --no-cache -t "bench-$case" "$@"
                 peer_cleanup buildah "$case" ;;
        docker) measure docker "$case" "$run" bash -c 'docker_build "$@"' _ "$c" --no-cache -t "bench-$case" "$@"
                peer_cleanup docker "$case" ;;
    esac
}

# run_warm CASE RUN TOOL: a rebuild of manyfiles over the tool's cache.
run_warm() {
    local case=$1 run=$2 tool=$3 c="$ctx/manyfiles"
    case $tool in
        kiln) measure kiln "$case" "$run" bash -c 'kiln_build kiln-warm "$@"' _ "$c" -t bench-warm ;;
        buildah) measure buildah "$case" "$run" bash -c 'buildah_build "$@"' _ "$c" -t bench-warm ;;
        docker) measure docker "$case" "$run" bash -c 'docker_build "$@"' _ "$c" -t bench-warm ;;
    esac
}

warm_up() { # one untimed manyfiles build per tool, so noop and incremental start cached
    for tool in "${tools[@]}"; do
        case $tool in
            kiln) [ -d "$(kiln_store kiln-warm)" ] || kiln_fresh kiln-warm
                  kiln_build kiln-warm "$ctx/manyfiles" -t bench-warm >"$work/logs/warm-kiln.log" 2>&1 ;;
            buildah) buildah_build "$ctx/manyfiles" -t bench-warm >"$work/logs/warm-buildah.log" 2>&1 ;;
            docker) docker_build "$ctx/manyfiles" -t bench-warm >"$work/logs/warm-docker.log" 2>&1 ;;
            buildkit) true ;;
        esac || die "warm-up build with $tool failed: see $work/logs/warm-$tool.log"
    done
}

# ---------------------------------------------------------------- the cases
IFS=, read -r -a selected <<<"$cases"
warmed=0
for case in "${selected[@]}"; do
    log "case $case (${runs} runs, tools: ${tools[*]})"
    for run in $(seq 1 "$runs"); do
        case $case in
            manyfiles|chain|target|parallel|bigfile)
                extra=()
                [ "$case" = target ] && extra=(--target b)
                for tool in "${tools[@]}"; do
                    [ "$tool" = buildkit ] && continue
                    args=("${extra[@]}")
                    if [ "$case" = parallel ] && [ "$tool" = buildah ]; then args+=(--jobs 6); fi
                    if [ "$case" = bigfile ]; then
                        case $tool in
                            kiln) kiln_fresh kiln
                                  measure kiln bigfile "$run" bash -c 'kiln_build kiln "$@"' _ "$ctx/bigfile" \
                                      -t bench-bigfile -o "type=oci,dest=$work/bigfile-kiln.tar" ;;
                            buildah) measure buildah bigfile "$run" bash -c \
                                      'buildah_build "$1" --no-cache -t bench-bigfile && peers_buildah push -q bench-bigfile "oci-archive:$2"' \
                                      _ "$ctx/bigfile" "$work/bigfile-buildah.tar"
                                     peer_cleanup buildah bigfile ;;
                            docker) measure docker bigfile "$run" bash -c \
                                      'docker_build "$1" --no-cache -t bench-bigfile && "$DOCKER" save -o "$2" bench-bigfile' \
                                      _ "$ctx/bigfile" "$work/bigfile-docker.tar"
                                    peer_cleanup docker bigfile ;;
                        esac
                        rm -f "$work"/bigfile-*.tar
                        continue
                    fi
                    run_cold "$case" "$run" "$tool" "${args[@]}"
                    if [ "$case" = parallel ] && [ "$tool" = kiln ]; then
                        run_cold parallel "$run" kiln-j1
                    fi
                done
                ;;
            incremental-bind)
                c="$ctx/incremental-bind"
                if [ "$run" = 1 ]; then
                    [ -d "$(kiln_store kiln-bind)" ] || kiln_fresh kiln-bind
                    for tool in "${tools[@]}"; do
                        case $tool in
                            kiln) kiln_build kiln-bind "$c" -t bench-bind ;;
                            buildah) buildah_build "$c" -t bench-bind ;;
                            buildkit) buildkit_build "$c" bench-bind ;;
                            *) true ;;
                        esac >"$work/logs/warm-bind-$tool.log" 2>&1 ||
                            die "warm-up build with $tool failed: see $work/logs/warm-bind-$tool.log"
                    done
                fi
                head -c 2000 /dev/urandom | od -An -tx1 >"$c/src/m100.js"
                for tool in "${tools[@]}"; do
                    case $tool in
                        kiln) measure kiln "$case" "$run" bash -c 'kiln_build kiln-bind "$@"' _ "$c" -t bench-bind ;;
                        buildah) measure buildah "$case" "$run" bash -c 'buildah_build "$@"' _ "$c" -t bench-bind ;;
                        buildkit) measure buildkit "$case" "$run" bash -c 'buildkit_build "$@"' _ "$c" bench-bind ;;
                    esac
                done
                ;;
            ci)
                c="$ctx/ci"
                # steps: ci-export, ci-cached, ci-changed (one file rewritten before it)
                for step in export cached changed; do
                    if [ "$step" = changed ]; then
                        head -c 5000 /dev/urandom >"$c/data/d42/f100"
                    fi
                    for tool in "${tools[@]}"; do
                        cache="$ci_registry/kiln-bench-ci/$tool-cache-$ci_stamp-$run"
                        image="$ci_registry/kiln-bench-ci/$tool-$step-$ci_stamp-$run:latest"
                        case $tool in
                            kiln)
                                kiln_empty ci
                                if [ "$step" = export ]; then
                                    measure kiln "ci-$step" "$run" bash -c 'kiln_build ci "$@"' _ "$c" \
                                        -t bench-ci --cache-to "type=registry,ref=$cache,mode=max"
                                else
                                    measure kiln "ci-$step" "$run" bash -c 'kiln_build ci "$@"' _ "$c" \
                                        -t "$image" --cache-from "type=registry,ref=$cache" --push
                                fi ;;
                            buildkit)
                                buildkit_empty
                                if [ "$step" = export ]; then
                                    measure buildkit "ci-$step" "$run" bash -c 'buildkit_ci "$@"' _ "$c" \
                                        --output type=image,name=bench-ci \
                                        --export-cache "type=registry,ref=$cache,mode=max"
                                else
                                    measure buildkit "ci-$step" "$run" bash -c 'buildkit_ci "$@"' _ "$c" \
                                        --output "type=image,name=$image,push=true" \
                                        --import-cache "type=registry,ref=$cache"
                                fi ;;
                        esac
                    done
                done
                ;;
            multiplatform)
                [ "$run" = 1 ] && mp_seed
                for tool in "${tools[@]}"; do
                    logf="$work/logs/multiplatform-$tool-$run.log"
                    case $tool in
                        kiln) kiln_fresh_multi mp
                              measure kiln multiplatform "$run" bash -c 'kiln_build mp "$@"' _ \
                                  "$ctx/multiplatform" --platform "$mp_platforms" \
                                  --build-arg "BASE=$mp_base" -t bench-multiplatform
                              mp_emulated kiln "$logf" ;;
                        buildkit) measure buildkit multiplatform "$run" bash -c 'buildkit_multi "$@"' _ \
                                      "$ctx/multiplatform" "$mp_base" "$mp_platforms"
                                  mp_emulated buildkit "$logf" ;;
                    esac
                done
                ;;
            noop|incremental)
                if [ "$warmed" = 0 ]; then warm_up; warmed=1; fi
                if [ "$case" = incremental ]; then
                    head -c 5000 /dev/urandom >"$ctx/manyfiles/data/d42/f100"
                fi
                for tool in "${tools[@]}"; do
                    [ "$tool" = buildkit ] || run_warm "$case" "$run" "$tool"
                done
                ;;
            *) die "unknown case \`$case\`: see --help" ;;
        esac
    done
    rm -rf "$work"/old-store-*
done

# ---------------------------------------------------------------- the table
echo
table_order=$(echo ",$cases," | sed 's/,ci,/,ci-export,ci-cached,ci-changed,/; s/^,//; s/,$//')
awk -F'\t' -v tools="kiln kiln-j1 ${tools[*]:1}" -v order="$table_order" '
function median(list,   n, a, i, j, t) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; j = i - 1; while (j > 0 && a[j] + 0 > t + 0) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
    if (n % 2) return a[(n + 1) / 2]
    return (a[n / 2] + a[n / 2 + 1]) / 2
}
{
    k = $1 SUBSEP $2
    if ($3 == "FAIL") { failed[k] = 1; next }
    ms[k] = ms[k] " " $3
    if ($4 + 0 > peak[k] + 0) peak[k] = $4
    seen[$1] = 1
}
END {
    nt = split(tools, t, " ")
    nc = split(order, c, ",")
    printf "%-12s", "case"
    for (i = 1; i <= nt; i++) if (seen[t[i]]) printf " %18s", t[i] " s (MB)"
    if (seen["buildah"]) printf " %10s", "kiln/bah"
    if (seen["docker"]) printf " %10s", "kiln/dock"
    if (seen["buildkit"]) printf " %10s", "kiln/bk"
    if (seen["kiln-j1"]) printf " %10s", "kiln/j1"
    printf "\n"
    for (j = 1; j <= nc; j++) {
        printf "%-12s", c[j]
        for (i = 1; i <= nt; i++) {
            if (!seen[t[i]]) continue
            k = t[i] SUBSEP c[j]
            if (k in failed) { printf " %18s", "FAIL"; continue }
            if (!(k in ms)) { printf " %18s", "-"; continue }
            m[t[i]] = median(ms[k]) / 1000
            printf " %11.3f (%4d)", m[t[i]], peak[k] / 1024
        }
        for (p = 1; p <= 4; p++) {
            peer = p == 1 ? "buildah" : p == 2 ? "docker" : p == 3 ? "buildkit" : "kiln-j1"
            if (!seen[peer]) continue
            kk = "kiln" SUBSEP c[j]; pk = peer SUBSEP c[j]
            if ((kk in ms) && (pk in ms) && median(ms[pk]) > 0) printf " %9.3fx", median(ms[kk]) / median(ms[pk])
            else printf " %10s", "-"
        }
        printf "\n"
    }
}' "$results" | tee "$work/results.txt"
echo "(median wall seconds of $runs runs, peak RSS MB in brackets; raw data: $results; logs: $work/logs)"
if [ -s "$emulated" ]; then
    echo
    awk -F'\t' '
    function median(list,   n, a, i, j, x) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) { x = a[i]; j = i - 1; while (j > 0 && a[j] + 0 > x + 0) { a[j + 1] = a[j]; j-- } a[j + 1] = x }
        if (n % 2) return a[(n + 1) / 2]
        return (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { emu[$1] = emu[$1] " " $2; all[$1] = all[$1] " " $3 }
    END {
        printf "%-14s %16s %16s %14s\n", "multiplatform", "arm64 RUNs s", "all steps s", "emulated share"
        for (t in emu) {
            em = median(emu[t]); st = median(all[t])
            printf "%-14s %16.2f %16.2f %13.0f%%\n", t, em, st, (st > 0 ? 100 * em / st : 0)
        }
    }' "$emulated" | tee -a "$work/results.txt"
    echo "(medians; emulated share: the final stage's arm64 RUN steps over the summed time of every step, which overlap, so not a share of the wall time)"
fi

if [ "$keep" = 0 ]; then
    rm -rf "$(kiln_store kiln)" "$(kiln_store kiln-j1)" "$(kiln_store mp)"
fi
