#!/usr/bin/env bash
# Profile-guided build of astron-edge: builds it instrumented, runs that build through the
# bench workloads, then builds the release binary again with the recorded profile.
#
#   bench/pgo.sh [OUT]          OUT defaults to target/pgo/astron-edge
#
# Why: most of a request's CPU is spent in Pingora, tokio and http — large generic code whose
# hot paths the compiler cannot tell from the cold ones (error handling, rare protocol
# cases). With the profile it lays out and inlines for the paths a proxy really takes:
# on small GETs it costs 1.21–1.24× less CPU per request than the plain build alone on a core
# (`bench/split.sh small small@target/pgo/astron-edge`) and 1.25–1.27× less with both sharing one
# (`bench/contend.sh small small@target/pgo/astron-edge`); bench/RESULTS.md, 2026-12-05
# "the PGO figure settled". The README's benchmark table has the rest.
#
# Workloads (bench/lib.sh's nginx backend, wrk): the `small` pass-through, `gzip`
# (20 KiB JSON), `telemetry` (access log + Prometheus + OTLP to a local sink) and
# `asset_cache` hits with and without gzip, TRAIN_SECONDS each (default 6).
#
# Needs: rustup (adds its `llvm-tools` component: llvm-profdata must be the compiler's own
# LLVM), nginx, wrk, curl, python3. Two release builds: ~20 minutes on 2 cores.
# The Docker image is built with this script (docker/Dockerfile).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
OUT=${1:-$REPO_DIR/target/pgo/astron-edge}
TRAIN_SECONDS=${TRAIN_SECONDS:-6}
CONNECTIONS=32
LOG_TAG=pgo
PGO_DIR=$REPO_DIR/target/pgo

HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA=$(rustc --print sysroot)/lib/rustlib/$HOST/bin/llvm-profdata
if [[ ! -x $PROFDATA ]]; then
    rustup component add llvm-tools
fi
[[ -x $PROFDATA ]] || { echo "[pgo] ERROR: no llvm-profdata at $PROFDATA" >&2; exit 1; }

# `--target` keeps RUSTFLAGS off build scripts and proc macros: only astron-edge and its
# dependencies are instrumented, then optimised.
build() {  # build RUSTFLAGS TARGET_DIR
    (cd "$REPO_DIR" && RUSTFLAGS=$1 cargo build --release --locked --bin astron-edge \
        --target "$HOST" --target-dir "$2")
}

rm -rf "$PGO_DIR/profiles"
echo "[pgo] instrumented build ..." >&2
build "-Cprofile-generate=$PGO_DIR/profiles" "$PGO_DIR/instrumented"

EDGE_BIN=$PGO_DIR/instrumented/$HOST/release/astron-edge
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
for tool in wrk curl python3 "$NGINX_BIN"; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install nginx wrk curl python3)"
done
start_backend
start_otlp_sink

train() {  # train CONFIG PATH [gzip] — one workload; the profile is written at exit
    local port headers=()
    port=$(free_port)
    proxy_command "$1" "$port"
    start_proxy "$1" "http://127.0.0.1:$port$2"
    [[ ${3:-} == gzip ]] && headers=(-H "Accept-Encoding: gzip")
    log "$1 $2 ${3:-}: $(wrk -t1 -c"$CONNECTIONS" "${headers[@]}" -d"${TRAIN_SECONDS}s" \
        "http://127.0.0.1:$port$2" | grep Requests/sec)"
    kill -INT "$PROXY_PID"
    wait "$PROXY_PID" || die "$1 did not exit cleanly: no profile"
}
train small /small
train gzip /json20k gzip
train telemetry /small
train asset_cache /assets/app.3f2a1b.js
train asset_cache /assets/app.3f2a1b.js gzip

"$PROFDATA" merge -o "$PGO_DIR/astron-edge.profdata" "$PGO_DIR/profiles"
echo "[pgo] optimised build ..." >&2
build "-Cprofile-use=$PGO_DIR/astron-edge.profdata" "$PGO_DIR/optimized"
mkdir -p "$(dirname "$OUT")"
cp "$PGO_DIR/optimized/$HOST/release/astron-edge" "$OUT"
echo "[pgo] $OUT" >&2
