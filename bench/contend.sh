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
# means B costs 1/0.91 = 1.10× A's CPU per request. Every thread of a proxy shares its CPU (an
# astron-edge with telemetry runs its writer and exporter threads there too), and the scheduler
# counts those threads as entities of their own, so each round also prints the ratio of CPU
# per request counted from each process's own ticks (/proc, all threads), which does not rest
# on an even split, and each side's µs of user + system CPU per request.
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
CLK_TCK=$(getconf CLK_TCK)
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

# user and system CPU ticks of a process, all its threads: "utime stime"
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }

load() {  # load SECONDS — both proxies at once; sets RATES and, per slot, USER_TICKS SYS_TICKS
    local slot pids=() before=()
    for slot in 0 1; do
        before+=("$(cpu_ticks "${SLOT_PIDS[slot]}")")
    done
    for slot in 0 1; do
        taskset -c "$LOAD_CPU" wrk "${WRK_ARGS[@]}" -d"$1s" \
            "http://127.0.0.1:${PORT[slot]}$REQUEST_PATH" >"$TMP/wrk.slot$slot" &
        pids+=("$!")
    done
    wait "${pids[@]}"
    RATES=() USER_TICKS=() SYS_TICKS=()
    for slot in 0 1; do
        RATES+=("$(awk '/^Requests\/sec/ { print $2 }' "$TMP/wrk.slot$slot")")
        read -r u0 s0 <<<"${before[slot]}"
        read -r u1 s1 <<<"$(cpu_ticks "${SLOT_PIDS[slot]}")"
        USER_TICKS+=($((u1 - u0)))
        SYS_TICKS+=($((s1 - s0)))
    done
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# One process pair measured against itself keeps a constant bias for its lifetime (0.974
# in one run, 1.006 in the next: memory layout, slot), which rounds of one pair cannot
# average out. So every round starts both afresh, the configurations taking turns in the
# first slot, and each round's ratio is B/A whatever the slots.
# CPU per request is also counted from each process's own ticks (/proc, every thread):
# it does not rest on the scheduler sharing the CPU evenly, and splits user from system.
printf '%-6s %-6s %14s %14s %8s %11s %15s %15s\n' round slot0 "${CONFIGS[0]} req/s" "${CONFIGS[1]} req/s" \
    "B/A" "B/A cpu/req" "A µs user+sys" "B µs user+sys"
ratios=() cpu_ratios=()
for ((round = 1; round <= ROUNDS; round++)); do
    first=$(((round + 1) % 2))
    start_pair "$first" $((1 - first))
    [[ $WARMUP == 0 ]] || load "$WARMUP"
    load "$DURATION"
    stop_pair
    [[ -n ${RATES[0]} && -n ${RATES[1]} ]] || die "wrk gave no rate in round $round"
    a_slot=$first b_slot=$((1 - first))
    a=${RATES[a_slot]} b=${RATES[b_slot]}
    ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
    # (ticks / requests) of B over A
    cpu_ratio=$(awk -v a="$a" -v b="$b" \
        -v ta=$((USER_TICKS[a_slot] + SYS_TICKS[a_slot])) -v tb=$((USER_TICKS[b_slot] + SYS_TICKS[b_slot])) \
        'BEGIN { printf "%.3f", (tb / b) / (ta / a) }')
    # µs of user + system CPU per request
    per_request() {
        awk -v u="${USER_TICKS[$1]}" -v s="${SYS_TICKS[$1]}" -v r="${RATES[$1]}" -v d="$DURATION" -v hz="$CLK_TCK" \
            'BEGIN { f = 1e6 / hz / (r * d); printf "%.1f+%.1f", u * f, s * f }'
    }
    ratios+=("$ratio")
    cpu_ratios+=("$cpu_ratio")
    printf '%-6s %-6s %14s %14s %8s %11s %15s %15s\n' "$round" "$([[ $first == 0 ]] && echo A || echo B)" \
        "$a" "$b" "$ratio" "$cpu_ratio" "$(per_request "$a_slot")" "$(per_request "$b_slot")"
done
m=$(printf '%s\n' "${ratios[@]}" | median)
c=$(printf '%s\n' "${cpu_ratios[@]}" | median)
echo "median B/A req/s: $m  (B's CPU per request: $(awk -v m="$m" 'BEGIN { printf "%.3f", 1 / m }')× A's)"
echo "median B/A CPU per request from the processes' own ticks: $c"
