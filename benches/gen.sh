#!/usr/bin/env bash
# Makes the build contexts of the whole-build benchmark (see README.md here): nothing large is
# committed, every context is generated.
#
# usage: gen.sh DIR BASE_IMAGE [CONTEXTS]   (CONTEXTS: a comma-separated subset; default all)
#   DIR/manyfiles   20,000 files of 5,000 random bytes (100 MB) in 100 directories
#   DIR/parallel    6 independent stages of ~2 s CPU each, then a stage copying from all
#   DIR/chain       40 sequential RUN steps
#   DIR/bigfile     a RUN writing 1 GiB of incompressible data
#   DIR/target      4 stages; --target b needs only a and b
#   DIR/ci          the manyfiles data (a copy: the ci case rewrites one file) and a three-stage
#                   Dockerfile: a dependency stage (~1 s CPU), a build stage copying the data and
#                   the dependency output, a final stage copying the build's results
#   DIR/multiplatform  a two-platform Dockerfile: a cross-compiled stage and emulated `RUN`s;
#                   its base is a build arg (`BASE`), an index of amd64 and arm64
# A context that is already complete is left alone (its `.complete` marker), so repeated runs
# do not pay for the generation again.
set -euo pipefail

dir=${1:?usage: gen.sh DIR BASE_IMAGE [CONTEXTS]}
base=${2:?usage: gen.sh DIR BASE_IMAGE [CONTEXTS]}
only=${3:-}
mkdir -p "$dir"
# wanted NAME: whether the caller asked for this context (all when CONTEXTS is not given).
wanted() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }

# The CPU work of one parallel stage: ONE single-threaded process, a busybox awk loop of N
# iterations (5,000,000 take about 2 s of one core here: `time busybox awk ...`). One process,
# not a pipe: `head -c 250m /dev/zero | sha256sum` kept two processes busy per stage, so even
# `--jobs 1` filled both cores and the case could not show what the scheduler's parallelism
# gains. BENCH_CPU_ITERS overrides it.
cpu_iters=${BENCH_CPU_ITERS:-5000000}

fresh() { # fresh NAME STAMP: true when DIR/NAME must be (re)made; clears it
    local d="$dir/$1"
    if [ "$(cat "$d/.complete" 2>/dev/null)" = "$2" ]; then return 1; fi
    rm -rf "$d"
    mkdir -p "$d"
}
done_() { echo "$2" >"$dir/$1/.complete"; }

# ---------------------------------------------------------------- manyfiles
stamp="v1 $base"
if wanted manyfiles && fresh manyfiles "$stamp"; then
    d="$dir/manyfiles"
    mkdir -p "$d/data"
    for i in $(seq -w 0 99); do
        mkdir -p "$d/data/d$i"
        # One process per directory: 1,000,000 random bytes cut into 200 files of 5,000.
        head -c 1000000 /dev/urandom | (cd "$d/data/d$i" && split -b 5000 -d -a 3 - f)
    done
    # The build never reads the marker: keep it out of the context's checksum and tar.
    printf '.complete\n' >"$d/.dockerignore"
    cat >"$d/Dockerfile" <<DF
FROM $base
COPY data /data
RUN find /data -type f | wc -l > /count && cat /count
DF
    done_ manyfiles "$stamp"
fi

# ---------------------------------------------------------------- ci
stamp="v1 $base $(cat "$dir/manyfiles/.complete" 2>/dev/null || true)"
if wanted ci && fresh ci "$stamp"; then
    d="$dir/ci"
    cp -r "$dir/manyfiles/data" "$d/data"
    printf '.complete\n' >"$d/.dockerignore"
    cat >"$d/Dockerfile" <<DF
FROM $base AS deps
RUN busybox awk 'BEGIN { for (i = 0; i < 2500000; i++) s += i % 7; print s }' > /deps.txt
FROM $base AS build
COPY --from=deps /deps.txt /deps.txt
COPY data /src
RUN find /src -type f | wc -l > /count && cat /src/d4*/f1* | md5sum > /sum
FROM $base
COPY --from=build /count /sum /out/
DF
    done_ ci "$stamp"
fi

# ---------------------------------------------------------------- parallel
stamp="v2 $base $cpu_iters"
if wanted parallel && fresh parallel "$stamp"; then
    d="$dir/parallel"
    {
        for i in 1 2 3 4 5 6; do
            echo "FROM $base AS s$i"
            # The stage number in the program keeps the six steps' cache keys apart.
            echo "RUN awk 'BEGIN { for (i = 0; i < $cpu_iters; i++) s += i * i % 7; print \"stage $i\", s }' > /out$i"
        done
        echo "FROM $base"
        for i in 1 2 3 4 5 6; do echo "COPY --from=s$i /out$i /out$i"; done
        echo "RUN cat /out*"
    } >"$d/Dockerfile"
    printf '.complete\n' >"$d/.dockerignore"
    done_ parallel "$stamp"
fi

# ---------------------------------------------------------------- chain
stamp="v1 $base"
if wanted chain && fresh chain "$stamp"; then
    d="$dir/chain"
    {
        echo "FROM $base"
        for i in $(seq 1 40); do echo "RUN echo step $i >> /chain"; done
    } >"$d/Dockerfile"
    printf '.complete\n' >"$d/.dockerignore"
    done_ chain "$stamp"
fi

# ---------------------------------------------------------------- bigfile
stamp="v1 $base"
if wanted bigfile && fresh bigfile "$stamp"; then
    d="$dir/bigfile"
    cat >"$d/Dockerfile" <<DF
FROM $base
RUN head -c 1073741824 /dev/urandom > /big
DF
    printf '.complete\n' >"$d/.dockerignore"
    done_ bigfile "$stamp"
fi

# ---------------------------------------------------------------- target
stamp="v1 $base"
if wanted target && fresh target "$stamp"; then
    d="$dir/target"
    cat >"$d/Dockerfile" <<DF
FROM $base AS a
RUN sleep 1 && echo a > /a
FROM a AS b
RUN sleep 1 && echo b > /b
FROM $base AS c
RUN sleep 1 && echo c > /c
FROM c AS d
COPY --from=b /b /b
RUN sleep 1 && echo d > /d
DF
    printf '.complete\n' >"$d/.dockerignore"
    done_ target "$stamp"
fi

# ---------------------------------------------------------------- incremental-bind
# A Node-style build: the dependency step bind-mounts only the lock file (an `npm ci` stand-in:
# 2 s, then reads the lock file), then the sources are copied. The case edits one source file
# between builds: only the `COPY` and what follows may run again.
stamp="v1 $base"
if wanted incremental-bind && fresh incremental-bind "$stamp"; then
    d="$dir/incremental-bind"
    mkdir -p "$d/src"
    head -c 30000 /dev/urandom | od -An -tx1 >"$d/package-lock.json"
    for i in $(seq -w 0 199); do
        head -c 2000 /dev/urandom | od -An -tx1 >"$d/src/m$i.js"
    done
    cat >"$d/Dockerfile" <<DF
FROM $base
RUN --mount=type=bind,source=package-lock.json,target=/app/package-lock.json \\
    sleep 2 && mkdir -p /app/node_modules && wc -c /app/package-lock.json > /app/node_modules/.installed
COPY src /app/src
RUN ls /app/src | wc -l > /app/count && cat /app/node_modules/.installed /app/count
DF
    printf '.complete\n' >"$d/.dockerignore"
    done_ incremental-bind "$stamp"
fi

# ---------------------------------------------------------------- multiplatform
# Built for linux/amd64 and linux/arm64 in one build (issue 17). awk loops of one core each:
# 1,000,000 iterations take ~0.4 s natively here, ~4 s emulated.
stamp="v1"
if wanted multiplatform && fresh multiplatform "$stamp"; then
    d="$dir/multiplatform"
    cat >"$d/Dockerfile" <<'DF'
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
DF
    printf '.complete\n' >"$d/.dockerignore"
    done_ multiplatform "$stamp"
fi
