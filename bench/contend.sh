#!/usr/bin/env bash
# Two proxy configurations at the same time, on the same CPU, each under its own wrk:
# the wall-clock price of one against the other, with the machine's noise cancelled.
#
#   bench/contend.sh A B        e.g. `small telemetry` (the cost of full telemetry),
#                               `bare small` (astron-edge's own work over bare Pingora)
#
# Run one after the other (bench/run.sh), identical rounds on this shared VM differ by
# 15–30 %, more than the differences to be measured. Here both proxies are CPU-bound on
# PROXY_CPU at the same time and the scheduler gives each half of it, so the ratio of their
# request rates is the inverse ratio of their CPU cost per request, and whatever slows the
# machine down slows both alike. Prints B/A req/s per round and the median; a ratio of 0.91
# means B costs 1/0.91 = 1.10× A's CPU per request. (Every thread of a proxy shares its CPU:
# an astron-edge with telemetry runs its writer and exporter threads there too.)
#
# CONFIG is `bare` (examples/bare_proxy.rs), `nginx` (bench/run.sh's proxy config for
# NGINX_SCENARIO, one process) or an astron-edge template bench/edge/NAME.toml.tmpl, which
# may name another build as NAME@BINARY: `gzip gzip@/tmp/astron-edge.old` is an A/B of two
# builds on one template.
# Environment: ROUNDS=6 (each with both proxies started afresh, taking turns in the first
#   slot) DURATION=10 WARMUP=2
#   CONNECTIONS=32 (per proxy) PROXY_CPU=0 LOAD_CPU=1
#   REQUEST_PATH=/small, ACCEPT_GZIP=1 adds `Accept-Encoding: gzip`, NGINX_SCENARIO=small
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
LOG_TAG=contend
[[ $# == 2 ]] || { echo "usage: bench/contend.sh CONFIG_A CONFIG_B" >&2; exit 2; }
[[ $1 != "$2" ]] || { echo "contend.sh: two different configurations" >&2; exit 2; }
CONFIGS=("$1" "$2")

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
require_tools taskset wrk curl "$NGINX_BIN"
start_backend "$LOAD_CPU"
start_otlp_sink "$LOAD_CPU"

start_pair() {  # start_pair FIRST SECOND — config indexes into slots 0 and 1; sets PORT, SLOT_PIDS
    local slot spec
    PORT=()
    SLOT_PIDS=()
    for slot in 0 1; do
        spec=${CONFIGS[$((slot == 0 ? $1 : $2))]}
        PORT[slot]=$(free_port)
        EDGE_BIN=$([[ $spec == *@* ]] && echo "${spec#*@}" || echo "$EDGE_BIN") \
            proxy_command "${spec%%@*}" "${PORT[slot]}" "slot$slot"
        start_proxy "slot$slot" "http://127.0.0.1:${PORT[slot]}$REQUEST_PATH" taskset -c "$PROXY_CPU"
        SLOT_PIDS+=("$PROXY_PID")
    done
}

stop_pair() {
    kill "${SLOT_PIDS[@]}" 2>/dev/null || true
    wait "${SLOT_PIDS[@]}" 2>/dev/null || true
}

load() {  # load SECONDS — both proxies at once; prints "slot0_req/s slot1_req/s"
    local slot pids=() rates=()
    for slot in 0 1; do
        taskset -c "$LOAD_CPU" wrk "${WRK_ARGS[@]}" -d"$1s" \
            "http://127.0.0.1:${PORT[slot]}$REQUEST_PATH" >"$TMP/wrk.slot$slot" &
        pids+=("$!")
    done
    wait "${pids[@]}"
    for slot in 0 1; do
        rates+=("$(awk '/^Requests\/sec/ { print $2 }' "$TMP/wrk.slot$slot")")
    done
    echo "${rates[@]}"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# One process pair measured against itself keeps a constant bias for its lifetime (0.974
# in one run, 1.006 in the next: memory layout, slot), which rounds of one pair cannot
# average out. So every round starts both afresh, the configurations taking turns in the
# first slot, and each round's ratio is B/A whatever the slots.
printf '%-6s %-6s %14s %14s %8s\n' round slot0 "${CONFIGS[0]} req/s" "${CONFIGS[1]} req/s" "B/A"
ratios=()
for ((round = 1; round <= ROUNDS; round++)); do
    first=$(((round + 1) % 2))
    start_pair "$first" $((1 - first))
    [[ $WARMUP == 0 ]] || load "$WARMUP" >/dev/null
    read -r r0 r1 <<<"$(load "$DURATION")"
    stop_pair
    [[ -n $r0 && -n $r1 ]] || die "wrk gave no rate in round $round"
    if ((first == 0)); then a=$r0 b=$r1; else a=$r1 b=$r0; fi
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
    ratios+=("$ratio")
    printf '%-6s %-6s %14s %14s %8s\n' "$round" "$([[ $first == 0 ]] && echo A || echo B)" "$a" "$b" "$ratio"
done
m=$(printf '%s\n' "${ratios[@]}" | median)
echo "median B/A req/s: $m  (B's CPU per request: $(awk -v m="$m" 'BEGIN { printf "%.3f", 1 / m }')× A's)"
