#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a CPU-cost figure
# that does not move with the machine's noise (wall-clock benchmarks on a shared 2-core VM
# swing by ±15 %; the instruction count of the same binary and load is repeatable).
#
#   bench/instructions.sh [CONFIG...]     (default: bare small telemetry)
#
# CONFIG is `bare` (examples/bare_proxy.rs, the bare Pingora pass-through), `nginx` (the
# proxy config of bench/run.sh for NGINX_SCENARIO, as one process) or the name of a template
# bench/edge/NAME.toml.tmpl run by astron-edge. Only user-space instructions are counted,
# for every proxy alike: the kernel's share (syscalls) is not in the figure.
# Each proxy runs alone under callgrind in front of bench/run.sh's nginx backend; WARMUP_S
# seconds of load are discarded (`callgrind_control -z`), then LOAD_S seconds of GETs of
# REQUEST_PATH over CONNECTIONS keep-alive connections are counted and divided by the
# requests wrk completed. Prints Ir per request and the ratio to the first config; the
# callgrind files stay in OUT_DIR for `callgrind_annotate --inclusive=yes`.
#
# Environment: WARMUP_S=3 LOAD_S=15 CONNECTIONS=8 OUT_DIR=target/instructions
#   REQUEST_PATH=/small   (/json20k with ACCEPT_GZIP=1 prices the gzip scenario; pair it
#                          with the `gzip` template and, for nginx, NGINX_SCENARIO=gzip)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
WARMUP_S=${WARMUP_S:-3}
LOAD_S=${LOAD_S:-15}
CONNECTIONS=${CONNECTIONS:-8}
OUT_DIR=${OUT_DIR:-$REPO_DIR/target/instructions}
CONFIGS=("$@")
[[ ${#CONFIGS[@]} -gt 0 ]] || CONFIGS=(bare small telemetry)

LOG_TAG=instructions

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
require_tools valgrind callgrind_control wrk curl "$NGINX_BIN"
mkdir -p "$OUT_DIR"
start_backend
# For templates that export (telemetry).
start_otlp_sink

declare -A IR_PER_REQ=()
for config in "${CONFIGS[@]}"; do
    port=$(free_port)
    out="$OUT_DIR/callgrind.$config"
    rm -f "$out" "$out".*
    proxy_command "$config" "$port"
    start_proxy "$config" "http://127.0.0.1:$port$REQUEST_PATH" \
        valgrind --tool=callgrind --callgrind-out-file="$out"
    pid=$PROXY_PID
    wrk "${WRK_ARGS[@]}" -d"${WARMUP_S}s" "http://127.0.0.1:$port$REQUEST_PATH" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    requests=$(wrk "${WRK_ARGS[@]}" -d"${LOAD_S}s" "http://127.0.0.1:$port$REQUEST_PATH" \
        | awk '/requests in/ { print $1 }')
    callgrind_control -d "$pid" >/dev/null
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    dump=$(ls -t "$out".* 2>/dev/null | head -1 || true)
    [[ -n $dump ]] || die "no callgrind dump for $config"
    ir=$(awk '/^summary:/ { print $2 }' "$dump")
    [[ -n $ir && ${requests:-0} -gt 0 ]] || die "$config: no count (ir=$ir requests=$requests)"
    IR_PER_REQ[$config]=$((ir / requests))
    log "$config: $requests requests, $ir instructions → ${IR_PER_REQ[$config]} per request ($dump)"
done

first=${CONFIGS[0]}
printf '%-22s %14s %8s\n' config "Ir/request" "ratio"
for config in "${CONFIGS[@]}"; do
    ratio=$(awk -v a="${IR_PER_REQ[$config]}" -v b="${IR_PER_REQ[$first]}" 'BEGIN { printf "%.3f", a / b }')
    printf '%-22s %14s %8s\n' "$config" "${IR_PER_REQ[$config]}" "${ratio}x"
done
