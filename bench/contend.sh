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
# Environment: ROUNDS=5 DURATION=10 WARMUP=2 CONNECTIONS=32 (per proxy) PROXY_CPU=0 LOAD_CPU=1
#   REQUEST_PATH=/small, ACCEPT_GZIP=1 adds `Accept-Encoding: gzip`, NGINX_SCENARIO=small
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
ROUNDS=${ROUNDS:-5}
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

# Each side gets its own slot (config directory, log, wrk output): both may use one template
# with two builds.
PORT=()
for side in 0 1; do
    spec=${CONFIGS[side]}
    PORT[side]=$(free_port)
    EDGE_BIN=$([[ $spec == *@* ]] && echo "${spec#*@}" || echo "$EDGE_BIN") \
        proxy_command "${spec%%@*}" "${PORT[side]}" "side$side"
    start_proxy "side$side" "http://127.0.0.1:${PORT[side]}$REQUEST_PATH" taskset -c "$PROXY_CPU"
done

load() {  # load SECONDS — both proxies at once; prints "A_req/s B_req/s"
    local side pids=() rates=()
    for side in 0 1; do
        taskset -c "$LOAD_CPU" wrk "${WRK_ARGS[@]}" -d"$1s" \
            "http://127.0.0.1:${PORT[side]}$REQUEST_PATH" >"$TMP/wrk.side$side" &
        pids+=("$!")
    done
    wait "${pids[@]}"
    for side in 0 1; do
        rates+=("$(awk '/^Requests\/sec/ { print $2 }' "$TMP/wrk.side$side")")
    done
    echo "${rates[@]}"
}

[[ $WARMUP == 0 ]] || load "$WARMUP" >/dev/null
printf '%-6s %14s %14s %8s\n' round "${CONFIGS[0]} req/s" "${CONFIGS[1]} req/s" "B/A"
ratios=()
for ((round = 1; round <= ROUNDS; round++)); do
    read -r a b <<<"$(load "$DURATION")"
    [[ -n $a && -n $b ]] || die "wrk gave no rate in round $round"
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
    ratios+=("$ratio")
    printf '%-6s %14s %14s %8s\n' "$round" "$a" "$b" "$ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
echo "median B/A req/s: $median  (B's CPU per request: $(awk -v m="$median" 'BEGIN { printf "%.3f", 1 / m }')× A's)"
