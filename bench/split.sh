#!/usr/bin/env bash
# Why two builds compare differently alone and sharing a CPU: each configuration's cost per
# request measured alone on PROXY_CPU, then both at once on it (as bench/contend.sh does),
# from the processes' own counters.
#
#   bench/split.sh A B          e.g. `small small@target/pgo/astron-edge`
#
# Every round runs A alone, B alone, then A and B together (fresh processes each time), each
# proxy under its own `wrk -t1 -cCONNECTIONS` on LOAD_CPU. Per proxy and run it prints:
# req/s; µs of user and system CPU per request (/proc/PID/stat ticks, all threads); its share
# of PROXY_CPU (CPU time / duration); and, from `perf stat -p` on the proxy, per request:
# epoll_wait calls (wake-ups: their inverse is requests served per wake-up), read/recvfrom
# and write/writev/sendto calls, and context switches. `contend.sh` assumes each of the pair
# gets half the CPU and that a request costs what it costs alone; this prints both.
#
# Environment: ROUNDS=3 DURATION=10 WARMUP=2 CONNECTIONS=32 PROXY_CPU=0 LOAD_CPU=1
#   REQUEST_PATH=/small. Needs perf with the syscalls tracepoints (root), taskset, wrk.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
LOG_TAG=split
CLK_TCK=$(getconf CLK_TCK)
[[ $# == 2 ]] || { echo "usage: bench/split.sh CONFIG_A CONFIG_B" >&2; exit 2; }
CONFIGS=("$1" "$2")
EVENTS=syscalls:sys_enter_epoll_wait,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,context-switches

# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"
require_tools taskset wrk curl perf "$NGINX_BIN"
# As bench/run.sh's BENCH_NICE: everything this script starts runs at nice -20, and so does
# its session's autogroup (with sched_autogroup, nice counts only inside one), so that
# others' builds on the shared machine take little CPU from the runs. Restored at exit.
BENCH_NICE=${BENCH_NICE:--20}
AUTOGROUP_OLD=$(awk '{ print $NF }' /proc/self/autogroup 2>/dev/null || true)
if [[ $BENCH_NICE != 0 ]] && renice -n "$BENCH_NICE" -p $$ >/dev/null 2>&1; then
    echo "$BENCH_NICE" >/proc/self/autogroup 2>/dev/null || true
    trap 'echo "$AUTOGROUP_OLD" >/proc/self/autogroup 2>/dev/null || true; cleanup' EXIT
fi
start_backend "$LOAD_CPU"

start_one() {  # start_one CONFIG_INDEX SLOT — sets PORTS[SLOT], PIDS_OF[SLOT]
    local spec=${CONFIGS[$1]}
    PORTS[$2]=$(free_port)
    EDGE_BIN=$([[ $spec == *@* ]] && echo "${spec#*@}" || echo "$EDGE_BIN") \
        proxy_command "${spec%%@*}" "${PORTS[$2]}" "slot$2"
    start_proxy "slot$2" "http://127.0.0.1:${PORTS[$2]}$REQUEST_PATH" taskset -c "$PROXY_CPU"
    PIDS_OF[$2]=$PROXY_PID
}

cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }

measure() {  # measure SLOT... — loads the given slots at once for DURATION; prints a row each
    local slot wrks=() perfs=() before=()
    for slot in "$@"; do
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" \
            "http://127.0.0.1:${PORTS[slot]}$REQUEST_PATH" >/dev/null &
        wrks+=("$!")
    done
    wait "${wrks[@]}"
    wrks=()
    # perf counts from before the load to after it (an idle proxy makes no syscalls): it
    # takes a while to attach, and a window of its own would miss the load's start.
    for slot in "$@"; do
        rm -f "$TMP/perf.$slot"
        perf stat -x, -o "$TMP/perf.$slot" -e "$EVENTS" -p "${PIDS_OF[slot]}" &
        perfs+=("$!")
    done
    for slot in "$@"; do
        for _ in $(seq 1 100); do [[ -s $TMP/perf.$slot ]] && break; sleep 0.1; done
    done
    sleep 1
    for slot in "$@"; do
        before[slot]=$(cpu_ticks "${PIDS_OF[slot]}")
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" \
            "http://127.0.0.1:${PORTS[slot]}$REQUEST_PATH" >"$TMP/wrk.$slot" &
        wrks+=("$!")
    done
    wait "${wrks[@]}"
    kill -INT "${perfs[@]}"
    wait "${perfs[@]}" || true
    for slot in "$@"; do
        local rate u0 s0 u1 s1
        rate=$(awk '/^Requests\/sec/ { print $2 }' "$TMP/wrk.$slot")
        read -r u0 s0 <<<"${before[slot]}"
        read -r u1 s1 <<<"$(cpu_ticks "${PIDS_OF[slot]}")"
        awk -F, -v name="$MODE:${CONFIGS[$((slot == 0 ? A_IDX : B_IDX))]}" -v r="$rate" -v d="$DURATION" \
            -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$CLK_TCK" '
            $3 ~ /epoll_wait/ { ep = $1 } $3 ~ /sys_enter_(read|recvfrom)$/ { rd += $1 }
            $3 ~ /sys_enter_(write|writev|sendto)$/ { wr += $1 } $3 ~ /context-switches/ { cs = $1 }
            END {
                n = r * d; f = 1e6 / hz / n
                printf "%-34s %9.0f %7.1f %7.1f %6.0f%% %8.3f %8.3f %8.3f %8.3f\n",
                    name, r, u * f, s * f, 100 * (u + s) / hz / d, ep / n, rd / n, wr / n, cs / n
            }' "$TMP/perf.$slot"
    done
}

stop_slots() {
    local pid
    for pid in "$@"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}

declare -a PORTS=() PIDS_OF=()
printf '%-34s %9s %7s %7s %7s %8s %8s %8s %8s\n' "mode:config" "req/s" "µs usr" "µs sys" "cpu%" \
    "epoll/r" "reads/r" "writes/r" "cswch/r"
for ((round = 1; round <= ROUNDS; round++)); do
    echo "round $round"
    for idx in 0 1; do
        MODE=alone A_IDX=$idx B_IDX=$idx
        start_one "$idx" 0
        measure 0
        stop_slots "${PIDS_OF[0]}"
    done
    # Together, taking turns in the first slot as contend.sh does.
    first=$(((round + 1) % 2))
    MODE=shared A_IDX=$first B_IDX=$((1 - first))
    start_one "$first" 0
    start_one $((1 - first)) 1
    measure 0 1
    stop_slots "${PIDS_OF[0]}" "${PIDS_OF[1]}"
done
