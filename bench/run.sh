#!/usr/bin/env bash
# astron-edge vs nginx, side by side, in front of the same backend.
#
#   bench/run.sh [--self-test] [SCENARIO...|all]      (default scenario: small)
#   bench/run.sh --list            list scenarios
#   bench/run.sh --test-parser     check the wrk output parser on canned output
#
# Environment:
#   ROUNDS=5          interleaved rounds (A B A B ...), drift cancels in the paired ratios
#   DURATION=10       seconds of measured load per run
#   WARMUP=2          seconds of unmeasured load before every measured run (0 = none)
#   CONNECTIONS=64    wrk connections (wrk runs with -t1)
#   ORDER=ab          ab: every round runs nginx then astron-edge (A B A B ...);
#                     abba: even rounds run astron-edge first (cancels order effects)
#   EDGE_BIN=target/release/astron-edge   (relative paths are taken from the repo root;
#                     built with `cargo build --release` when missing)
#   PROXY_CPU=0       CPU the proxy under test is pinned to
#   LOAD_CPU=1        CPU the backend and wrk are pinned to
#   BENCH_NICE=-20    nice level of proxies, backend and wrk (and of this session's
#                     autogroup while the bench runs), so that other work on a shared
#                     machine (builds) barely competes; needs root, else 0
#   WAIT_QUIET=30     before each run wait up to this many seconds for the machine
#                     to be idle (others' builds distort results); 0 = don't wait
#   RESULTS_DIR=      if set, the raw per-run TSV is copied there
#   KEEP_TMP=1        keep the temp dir (configs, logs, raw wrk output)
#   BASELINE=bare     slot A runs a bare Pingora pass-through (examples/bare_proxy.rs)
#                     instead of nginx: the price of astron-edge's own work (small only)
#
# --self-test runs a second nginx in the astron-edge slot: the harness is
# checked end to end and the ratios must come out close to 1.0.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=bench/payloads.sh
source "$BENCH_DIR/payloads.sh"

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
ORDER=${ORDER:-ab}
PROXY_CPU=${PROXY_CPU:-0}
BENCH_NICE=${BENCH_NICE:--20}
LOAD_CPU=${LOAD_CPU:-1}
EDGE_BIN=${EDGE_BIN:-target/release/astron-edge}
[[ $EDGE_BIN == /* ]] || EDGE_BIN="$REPO_DIR/$EDGE_BIN"
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
CLK_TCK=$(getconf CLK_TCK)

SELF_TEST=0
TMP=""
PIDS=()            # every process this script started (nginx masters, astron-edge)
BACKEND_PORT=""
BACKEND_PID=""
USED_PORTS=" "

# Slots: A is always nginx; B is astron-edge (or a second nginx with --self-test).
SLOT_A_NAME=nginx
[[ ${BASELINE:-nginx} == bare ]] && SLOT_A_NAME=bare
SLOT_B_NAME=edge
declare -A SLOT_PID=() SLOT_PORT=() SLOT_KIND=()

log()  { printf '[bench] %s\n' "$*" >&2; }
die()  { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# process management
# ---------------------------------------------------------------------------
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# With sched_autogroup (most desktop/dev kernels) nice only counts inside a
# session's autogroup, so other sessions' builds would still take half the CPU
# from the bench: raise the autogroup's weight too while the bench runs (root),
# and put it back at exit.
AUTOGROUP_OLD=""
boost_autogroup() {
    [[ $BENCH_NICE != 0 && -w /proc/self/autogroup ]] || return 0
    [[ $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null) == 1 ]] || return 0
    local old
    old=$(awk '{ print $NF }' /proc/self/autogroup)
    if echo "$BENCH_NICE" >/proc/self/autogroup 2>/dev/null; then
        AUTOGROUP_OLD=$old
    fi
}
restore_autogroup() {
    [[ -n $AUTOGROUP_OLD ]] || return 0
    echo "$AUTOGROUP_OLD" >/proc/self/autogroup 2>/dev/null || true
    AUTOGROUP_OLD=""
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    restore_autogroup
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ ${KEEP_TMP:-0} == 1 ]]; then
            log "temp dir kept: $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}

forget_pid() {
    local pid=$1 p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# A free TCP port on 127.0.0.1 (nothing listening, not handed out before).
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 30000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if ! ss -Htln "sport = :$p" 2>/dev/null | grep -q .; then
            USED_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

# wait_http URL [attempts] — poll until the URL answers 200 (0.1 s apart).
wait_http() {
    local url=$1 attempts=${2:-100} i
    for ((i = 0; i < attempts; i++)); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" 2>/dev/null) == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# render TEMPLATE OUT KEY=VALUE... — replace @KEY@ with VALUE (values may span lines).
render() {
    local tmpl=$1 out=$2 kv key val content
    shift 2
    content=$(<"$tmpl")
    for kv in "$@"; do
        key=${kv%%=*}
        val=${kv#*=}
        content=${content//@"$key"@/$val}
    done
    if grep -qE '@[A-Z_]+@' <<<"$content"; then
        die "unrendered placeholder in $tmpl: $(grep -oE '@[A-Z_]+@' <<<"$content" | sort -u | tr '\n' ' ')"
    fi
    printf '%s\n' "$content" >"$out"
}

# ---------------------------------------------------------------------------
# CPU accounting: utime+stime (clock ticks) of a process and its children
# ---------------------------------------------------------------------------
proc_ticks() {  # one pid; fields after the ")" of comm: utime is 12th, stime 13th
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    rest=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$rest"
}

# Total ticks of PID and its direct children (nginx master + workers;
# astron-edge is one process whose threads are included in its own stat).
tree_ticks() {
    local pid=$1 total c
    total=$(proc_ticks "$pid")
    for c in $(pgrep -P "$pid" 2>/dev/null || true); do
        total=$((total + $(proc_ticks "$c")))
    done
    echo "$total"
}

# Busy ticks of tasks on the whole machine (all CPUs) from /proc/stat:
# user+nice+system+steal. irq/softirq are left out: loopback networking runs
# largely in softirq, which the kernel does not charge to any process, so it
# would look like "someone else" although it is the benchmark's own traffic.
system_busy_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $9; exit }' /proc/stat
}

# All busy ticks (softirq included) of the proxy's CPU: ≈ 100 % of the run's
# length means the proxy's core was saturated.
proxy_core_ticks() {
    awk -v c="cpu$PROXY_CPU" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# CPU seconds of this shell's reaped children (wrk runs in the foreground, so
# the delta around it is wrk's own CPU). `times` must run in this shell, not
# in a pipeline subshell, hence the file.
children_cpu_s() {
    times >"$TMP/.times"
    awk 'function s(t,  m) { m = t; sub(/m.*/, "", m); sub(/^[0-9]+m/, "", t); sub(/s$/, "", t); return m * 60 + t }
         NR == 2 { printf "%.3f\n", s($1) + s($2) }' "$TMP/.times"
}

# wait_quiet — before a measured run, wait (up to WAIT_QUIET seconds) until the
# machine is idle apart from us: less than 15% of a CPU busy over 1 s.
wait_quiet() {
    local max=${WAIT_QUIET:-30} waited=0 a b busy
    ((max > 0)) || return 0
    while :; do
        a=$(system_busy_ticks); sleep 1; b=$(system_busy_ticks)
        busy=$(( (b - a) * 100 / CLK_TCK ))
        ((busy < 15)) && return 0
        ((waited == 0)) && log "machine busy (${busy}% of a CPU in use by others), waiting up to ${max}s ..."
        waited=$((waited + 1))
        ((waited < max)) || { log "still busy after ${max}s; measuring anyway"; return 0; }
    done
}

# ---------------------------------------------------------------------------
# wrk output parsing
# ---------------------------------------------------------------------------
# parse_wrk FILE → "requests duration_s rps p50_us p99_us errors"
# Uses the WRKSTATS line of bench/wrk/report.lua when present; otherwise
# falls back to wrk's text output (units us/ms/s/m and k/M/G handled).
parse_wrk() {
    awk '
    function us(v,   n, u) {       # latency/time string -> microseconds
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us" || u == "")  return n
        if (u == "ms")             return n * 1000
        if (u == "s")              return n * 1000000
        if (u == "m")              return n * 60000000
        if (u == "h")              return n * 3600000000
        return -1
    }
    function cnt(v,   n, u) {      # count string -> number
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "")  return n
        if (u == "k") return n * 1000
        if (u == "M") return n * 1000000
        if (u == "G") return n * 1000000000
        return -1
    }
    /^WRKSTATS / {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); s[kv[1]] = kv[2] }
        have = 1
    }
    /^[ \t]*50%/ { t50 = us($2) }
    /^[ \t]*99%/ { t99 = us($2) }
    / requests in / { treq = cnt($1); d = $4; sub(/,$/, "", d); tdur = us(d) / 1000000 }
    /^Requests\/sec:/ { trps = cnt($2) }
    /Socket errors:/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { x = $i; sub(/,/, "", x); terr += x }
    }
    /Non-2xx or 3xx responses:/ { terr += $NF }
    END {
        if (have) {
            req = s["requests"]; dur = s["duration_us"] / 1000000
            err = s["err_connect"] + s["err_read"] + s["err_write"] + s["err_status"] + s["err_timeout"]
            printf "%d %.3f %.1f %.1f %.1f %d\n", req, dur, (dur > 0 ? req / dur : 0), s["p50_us"], s["p99_us"], err
        } else if (treq > 0) {
            printf "%d %.3f %.1f %.1f %.1f %d\n", treq, tdur, (trps > 0 ? trps : treq / tdur), t50, t99, terr
        } else {
            print "0 0 0 0 0 0"
        }
    }' "$1"
}

test_parser() {
    local f out rc=0
    f=$(mktemp)
    cat >"$f" <<'EOF'
Running 10s test @ http://127.0.0.1:8080/small
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.46ms  210.33us   1.02s    91.20%
    Req/Sec    44.12k     1.20k   46.01k    70.00%
  Latency Distribution
     50%  850.00us
     75%    1.55ms
     90%    1.71ms
     99%    1.20s
  439123 requests in 10.00s, 549.92MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  43.91k
Transfer/sec:     54.99MB
EOF
    out=$(parse_wrk "$f")
    [[ $out == "439123 10.000 43910.0 850.0 1200000.0 7" ]] || { echo "text parse: got '$out'"; rc=1; }
    echo "WRKSTATS requests=500000 duration_us=10000000 bytes=1 p50_us=1400.5 p90_us=1 p99_us=2900.0 max_us=1 err_connect=0 err_read=0 err_write=0 err_status=3 err_timeout=0" >>"$f"
    out=$(parse_wrk "$f")
    [[ $out == "500000 10.000 50000.0 1400.5 2900.0 3" ]] || { echo "lua parse: got '$out'"; rc=1; }
    rm -f "$f"
    [[ $rc == 0 ]] && echo "parser OK"
    return "$rc"
}

fmt_us() {  # microseconds -> human string
    awk -v u="$1" 'BEGIN { if (u >= 1000000) printf "%.2fs", u/1000000; else if (u >= 1000) printf "%.2fms", u/1000; else printf "%.0fus", u }'
}

median() {  # numbers on stdin, one per line
    sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "nan"; exit } if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------------------
# backend
# ---------------------------------------------------------------------------
# pinned CPU CMD... — exec CMD pinned to CPU at the bench's nice level.
# It REPLACES the calling shell: use `pinned ... &` (then $! is CMD's own PID,
# through the exec chain taskset → nice → CMD, so /proc/$!/stat and its
# children are the proxy's) or `(pinned ...)` in the foreground.
pinned() {
    local cpu=$1
    shift
    exec taskset -c "$cpu" nice -n "$BENCH_NICE" "$@"
}

start_nginx() {  # start_nginx NAME CONF CPU → sets REPLY_PID
    local name=$1 conf=$2 cpu=$3 dir
    dir=$(dirname "$conf")
    mkdir -p "$dir/tmp"
    "$NGINX_BIN" -t -q -p "$dir" -c "$conf" -e "$dir/error.log" >"$dir/test.log" 2>&1 \
        || { cat "$dir/test.log" >&2; die "nginx config test failed for $name"; }
    pinned "$cpu" "$NGINX_BIN" -p "$dir" -c "$conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
    REPLY_PID=$!
    PIDS+=("$REPLY_PID")
}

start_backend() {
    [[ -n $BACKEND_PORT ]] && return 0
    BACKEND_PORT=$(free_port)
    make_payloads "$TMP/www"
    mkdir -p "$TMP/backend"
    render "$BENCH_DIR/nginx/backend.conf.tmpl" "$TMP/backend/nginx.conf" DIR="$TMP" BACKEND_PORT="$BACKEND_PORT" \
        SMALL_BODY="$(<"$TMP/www/small.txt")"
    start_nginx backend "$TMP/backend/nginx.conf" "$LOAD_CPU"
    BACKEND_PID=$REPLY_PID
    wait_http "http://127.0.0.1:$BACKEND_PORT/backend-health" \
        || { cat "$TMP/backend/error.log" >&2 || true; die "backend did not come up"; }
    local size
    size=$(curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:$BACKEND_PORT/small")
    [[ $size == 1024 ]] || die "backend /small returned $size bytes, expected 1024"
    log "backend nginx on 127.0.0.1:$BACKEND_PORT (pid $REPLY_PID, cpu $LOAD_CPU)"
}

# ---------------------------------------------------------------------------
# proxies under test
# ---------------------------------------------------------------------------
start_nginx_proxy() {  # start_nginx_proxy SLOT SCENARIO
    local slot=$1 scen=$2 port dir inc
    port=$(free_port)
    dir="$TMP/$scen/$slot"
    mkdir -p "$dir"
    inc="$BENCH_DIR/nginx/$scen.inc"
    [[ -f $inc ]] || die "missing $inc"
    render "$BENCH_DIR/nginx/proxy.conf.tmpl" "$dir/nginx.conf" \
        SLOTDIR="$dir" PORT="$port" BACKEND_PORT="$BACKEND_PORT" SCENARIO="$(<"$inc")"
    start_nginx "$slot" "$dir/nginx.conf" "$PROXY_CPU"
    SLOT_PID[$slot]=$REPLY_PID
    SLOT_PORT[$slot]=$port
    SLOT_KIND[$slot]=nginx
}

ensure_edge_bin() {
    [[ -x $EDGE_BIN ]] && return 0
    if [[ $EDGE_BIN == "$REPO_DIR/target/release/astron-edge" ]]; then
        log "building astron-edge (cargo build --release) ..."
        (cd "$REPO_DIR" && cargo build --release) || die "cargo build failed"
    fi
    [[ -x $EDGE_BIN ]] || die "astron-edge binary not found at $EDGE_BIN (set EDGE_BIN)"
}

start_edge_proxy() {  # start_edge_proxy SLOT SCENARIO [KEY=VALUE...] (extra template values)
    local slot=$1 scen=$2 port dir tmpl
    shift 2
    ensure_edge_bin
    port=$(free_port)
    dir="$TMP/$scen/$slot"
    mkdir -p "$dir"
    tmpl="$BENCH_DIR/edge/$scen.toml.tmpl"
    [[ -f $tmpl ]] || die "missing $tmpl"
    render "$tmpl" "$dir/astron-edge.toml" PORT="$port" BACKEND_PORT="$BACKEND_PORT" SLOTDIR="$dir" "$@"
    # No telemetry from the environment of whoever runs the bench.
    local -a envclean=(env -u OTLP_ENABLE -u OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_ENDPOINT
        -u OTEL_EXPORTER_OTLP_PROTOCOL -u ASTRON_EDGE_CONFIG RUST_LOG="${EDGE_RUST_LOG:-warn}")
    "${envclean[@]}" "$EDGE_BIN" check -c "$dir/astron-edge.toml" >"$dir/check.log" 2>&1 \
        || { cat "$dir/check.log" >&2; die "astron-edge check rejected $dir/astron-edge.toml"; }
    pinned "$PROXY_CPU" "${envclean[@]}" "$EDGE_BIN" run -c "$dir/astron-edge.toml" \
        >"$dir/stdout.log" 2>"$dir/stderr.log" &
    SLOT_PID[$slot]=$!
    PIDS+=("$!")
    SLOT_PORT[$slot]=$port
    SLOT_KIND[$slot]=edge
}

# The bare Pingora pass-through (examples/bare_proxy.rs) in slot A, with BASELINE=bare:
# what astron-edge's own work costs on top of Pingora.
start_bare_proxy() {  # start_bare_proxy SLOT
    local slot=$1 port bin="$REPO_DIR/target/release/examples/bare_proxy"
    [[ -x $bin ]] || (cd "$REPO_DIR" && cargo build --release --example bare_proxy) || die "cannot build bare_proxy"
    port=$(free_port)
    mkdir -p "$TMP/bare"
    pinned "$PROXY_CPU" "$bin" "127.0.0.1:$port" "127.0.0.1:$BACKEND_PORT" >"$TMP/bare/out.log" 2>&1 &
    SLOT_PID[$slot]=$!
    PIDS+=("$!")
    SLOT_PORT[$slot]=$port
    SLOT_KIND[$slot]=bare-pingora
}

# start_pair SCENARIO PATH — both proxies up, both checked on PATH.
start_pair() {
    local scen=$1 path=$2 slot
    if [[ ${BASELINE:-nginx} == bare ]]; then
        start_bare_proxy "$SLOT_A_NAME"
    else
        start_nginx_proxy "$SLOT_A_NAME" "$scen"
    fi
    if [[ $SELF_TEST == 1 ]]; then
        start_nginx_proxy "$SLOT_B_NAME" "$scen"
        # still make sure the edge template renders to valid TOML
        local t="$TMP/$scen/edge-template-check.toml"
        render "$BENCH_DIR/edge/$scen.toml.tmpl" "$t" PORT=1 BACKEND_PORT=2
        python3 -c 'import sys,tomllib; tomllib.load(open(sys.argv[1],"rb"))' "$t" 2>/dev/null \
            || log "warning: $t is not valid TOML (or python3 lacks tomllib)"
    else
        start_edge_proxy "$SLOT_B_NAME" "$scen"
    fi
    for slot in "$SLOT_A_NAME" "$SLOT_B_NAME"; do
        if ! wait_http "http://127.0.0.1:${SLOT_PORT[$slot]}$path" 150; then
            tail -n 30 "$TMP/$scen/$slot/"*.log >&2 || true
            die "$slot (${SLOT_KIND[$slot]}) did not answer 200 on $path"
        fi
        # the PID must be the proxy itself, not a wrapper shell, or the CPU
        # accounting misses it and cleanup leaves it running
        local comm
        comm=$(cat "/proc/${SLOT_PID[$slot]}/comm" 2>/dev/null || echo "?")
        case $comm in bash|sh|taskset|nice|env|"?") die "$slot: pid ${SLOT_PID[$slot]} is '$comm', not the proxy" ;; esac
        # same body as the backend's (no compression asked for here)
        local got want
        got=$(curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:${SLOT_PORT[$slot]}$path")
        want=$(curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:$BACKEND_PORT$path")
        [[ $got == "$want" ]] || die "$slot returned $got bytes on $path, the backend $want"
        log "$slot: ${SLOT_KIND[$slot]} on 127.0.0.1:${SLOT_PORT[$slot]} (pid ${SLOT_PID[$slot]}, cpu $PROXY_CPU)"
    done
}

stop_pair() {
    local slot
    for slot in "$SLOT_A_NAME" "$SLOT_B_NAME"; do
        [[ -n ${SLOT_PID[$slot]:-} ]] || continue
        stop_pid "${SLOT_PID[$slot]}"
        forget_pid "${SLOT_PID[$slot]}"
        unset "SLOT_PID[$slot]"
    done
}

# ---------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------
# measure SCENARIO ROUND SLOT PATH [extra wrk args] → appends one TSV row
measure() {
    local scen=$1 round=$2 slot=$3 path=$4
    shift 4
    local port=${SLOT_PORT[$slot]} pid=${SLOT_PID[$slot]}
    local url="http://127.0.0.1:$port$path"
    local out="$TMP/$scen/wrk-r$round-$slot.txt"
    kill -0 "$pid" 2>/dev/null || die "$slot (pid $pid) is not running"
    wait_quiet
    if ((WARMUP > 0)); then
        (pinned "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$@" "$url") >/dev/null 2>&1 || true
    fi
    local t0 t1 b0 b1 s0 s1 w0 w1 c0 c1 e0 e1
    e0=$EPOCHREALTIME
    w0=$(children_cpu_s)
    c0=$(proxy_core_ticks)
    s0=$(system_busy_ticks)
    b0=$(tree_ticks "$BACKEND_PID")
    t0=$(tree_ticks "$pid")
    (pinned "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency \
        -s "$BENCH_DIR/wrk/report.lua" "$@" "$url") >"$out" 2>&1 \
        || { cat "$out" >&2; die "wrk failed against $slot"; }
    t1=$(tree_ticks "$pid")
    b1=$(tree_ticks "$BACKEND_PID")
    s1=$(system_busy_ticks)
    c1=$(proxy_core_ticks)
    w1=$(children_cpu_s)
    e1=$EPOCHREALTIME
    kill -0 "$pid" 2>/dev/null || die "$slot (pid $pid) died during the run"

    local req dur rps p50 p99 err
    read -r req dur rps p50 p99 err < <(parse_wrk "$out")
    ((req > 0)) || { cat "$out" >&2; die "no requests completed against $slot"; }
    ((err == 0)) || log "warning: $slot round $round: $err errors (see $out)"
    awk -v s="$scen" -v r="$round" -v p="$slot" -v req="$req" -v dur="$dur" -v rps="$rps" \
        -v p50="$p50" -v p99="$p99" -v err="$err" -v ticks=$((t1 - t0)) -v hz="$CLK_TCK" \
        -v bticks=$((b1 - b0)) -v sticks=$((s1 - s0)) -v cticks=$((c1 - c0)) -v wall="$(awk -v a="$e0" -v b="$e1" 'BEGIN { print b - a }')" -v wcpu="$(awk -v a="$w0" -v b="$w1" 'BEGIN { print b - a }')" '
        BEGIN {
            cpu = ticks / hz
            # task time of everything else on the machine meanwhile (other
            # processes, kernel threads), in % of one CPU; machine-wide
            # counters are over the whole measuring window (wall), the proxy
            # counters over wrk'"'"'s run (dur)
            if (wall <= 0) wall = dur
            other = (sticks / hz - cpu - bticks / hz - wcpu)
            if (other < 0) other = 0
            printf "%s\t%s\t%s\t%.1f\t%.1f\t%.1f\t%.3f\t%.4f\t%.1f\t%d\t%d\t%.1f\t%.1f\n",
                s, r, p, rps, p50, p99, cpu, cpu / req * 10000, (dur > 0 ? cpu / dur * 100 : 0), req, err,
                (wall > 0 ? other / wall * 100 : 0), (wall > 0 ? cticks / hz / wall * 100 : 0)
        }' >>"$RESULTS"
    local other
    other=$(tail -n 1 "$RESULTS" | cut -f 12)
    if awk -v o="$other" 'BEGIN { exit !(o > 25) }'; then
        log "warning: $slot round $round: ${other}% of a CPU went to other work on this machine during the run (noisy)"
    fi
}

print_round() {  # print_round SCENARIO ROUND
    awk -F'\t' -v s="$1" -v r="$2" '
        function fu(u) { if (u >= 1000000) return sprintf("%.2fs", u/1e6); if (u >= 1000) return sprintf("%.2fms", u/1e3); return sprintf("%.0fus", u) }
        $1 == s && $2 == r {
            printf "  %-6s %-9s %10.0f %10s %10s %8.2f %9.4f %6.1f%% %6.1f%% %7d %7.1f%%\n", $2, $3, $4, fu($5), fu($6), $7, $8, $9, $13, $11, $12
        }' "$RESULTS"
}

summarize() {  # summarize SCENARIO
    local scen=$1 slot
    local -a notes=()
    echo
    echo "== $scen: medians over $ROUNDS rounds ($( [[ $SELF_TEST == 1 ]] && echo "SELF-TEST: nginx in both slots" || echo "A=nginx, B=astron-edge"))"
    printf '  %-9s %10s %10s %10s %9s %7s %7s\n' proxy "req/s" p50 p99 "cpu/10k" "cpu%" "core%"
    for slot in "$SLOT_A_NAME" "$SLOT_B_NAME"; do
        local mr m50 m99 mc mp mk
        mr=$(awk -F'\t' -v s="$scen" -v p="$slot" '$1==s && $3==p {print $4}' "$RESULTS" | median)
        m50=$(awk -F'\t' -v s="$scen" -v p="$slot" '$1==s && $3==p {print $5}' "$RESULTS" | median)
        m99=$(awk -F'\t' -v s="$scen" -v p="$slot" '$1==s && $3==p {print $6}' "$RESULTS" | median)
        mc=$(awk -F'\t' -v s="$scen" -v p="$slot" '$1==s && $3==p {print $8}' "$RESULTS" | median)
        mp=$(awk -F'\t' -v s="$scen" -v p="$slot" '$1==s && $3==p {print $9}' "$RESULTS" | median)
        mk=$(awk -F'\t' -v s="$scen" -v p="$slot" '$1==s && $3==p {print $13}' "$RESULTS" | median)
        printf '  %-9s %10.0f %10s %10s %9.4f %6.1f%% %6.1f%%\n' "$slot" "$mr" "$(fmt_us "$m50")" "$(fmt_us "$m99")" "$mc" "$mp" "$mk"
        if awk -v p="$mk" 'BEGIN { exit !(p < 90) }'; then
            notes+=("$slot's core was only ${mk}% busy: the proxy was not the bottleneck (backend/wrk CPU or other load was); trust cpu/10k more than req/s")
        fi
    done
    local n
    for n in "${notes[@]}"; do echo "  note: $n"; done
    # paired per-round ratios B/A (edge/nginx)
    local ratios
    ratios=$(awk -F'\t' -v s="$scen" -v a="$SLOT_A_NAME" -v b="$SLOT_B_NAME" '
        $1 == s { v[$2, $3, "rps"] = $4; v[$2, $3, "cpu"] = $8; v[$2, $3, "p99"] = $6; rounds[$2] = 1 }
        END {
            for (r in rounds)
                if (v[r, a, "rps"] > 0 && v[r, a, "cpu"] > 0 && v[r, a, "p99"] > 0)
                    printf "%s %.4f %.4f %.4f\n", r, v[r, b, "rps"] / v[r, a, "rps"], v[r, b, "cpu"] / v[r, a, "cpu"], v[r, b, "p99"] / v[r, a, "p99"]
        }' "$RESULTS" | sort -n)
    echo
    echo "  paired ratios $SLOT_B_NAME/$SLOT_A_NAME per round (req/s, cpu/10k, p99):"
    awk '{ printf "    round %-3s req/s %.3f   cpu/10k %.3f   p99 %.3f\n", $1, $2, $3, $4 }' <<<"$ratios"
    local r_rps r_cpu r_p99
    r_rps=$(awk '{print $2}' <<<"$ratios" | median)
    r_cpu=$(awk '{print $3}' <<<"$ratios" | median)
    r_p99=$(awk '{print $4}' <<<"$ratios" | median)
    printf '  MEDIAN RATIO %s/%s: req/s %.3f   cpu/10k %.3f   p99 %.3f\n' "$SLOT_B_NAME" "$SLOT_A_NAME" "$r_rps" "$r_cpu" "$r_p99"
    printf '# %s median ratio %s/%s: rps=%.4f cpu_per_10k=%.4f p99=%.4f\n' "$scen" "$SLOT_B_NAME" "$SLOT_A_NAME" "$r_rps" "$r_cpu" "$r_p99" >>"$RESULTS.summary"
}

# run_ab SCENARIO PATH [extra wrk args] — interleaved rounds A B A B ...
run_ab() {
    local scen=$1 path=$2 round
    shift 2
    echo
    echo "== scenario $scen: GET $path, wrk -t1 -c$CONNECTIONS -d${DURATION}s $*, $ROUNDS rounds"
    printf '  %-6s %-9s %10s %10s %10s %8s %9s %7s %7s %7s %8s\n' round proxy "req/s" p50 p99 "cpu_s" "cpu/10k" "cpu%" "core%" errors "other%"
    for ((round = 1; round <= ROUNDS; round++)); do
        if [[ $ORDER == abba ]] && ((round % 2 == 0)); then
            measure "$scen" "$round" "$SLOT_B_NAME" "$path" "$@"
            measure "$scen" "$round" "$SLOT_A_NAME" "$path" "$@"
        else
            measure "$scen" "$round" "$SLOT_A_NAME" "$path" "$@"
            measure "$scen" "$round" "$SLOT_B_NAME" "$path" "$@"
        fi
        print_round "$scen" "$round"
    done
    summarize "$scen"
}

# ---------------------------------------------------------------------------
# scenarios — one function each, registered in SCENARIOS below.
# A scenario: start_backend; start_pair KEY PATH (uses bench/nginx/KEY.inc and
# bench/edge/KEY.toml.tmpl); run_ab KEY PATH [wrk args]; stop_pair.
# ---------------------------------------------------------------------------

# small: 1 KiB GET, keep-alive, no compression — the raw per-request cost.
scenario_small_get() {
    start_backend
    start_pair small /small
    run_ab small /small
    stop_pair
}

# gzip: 20 KiB JSON with "Accept-Encoding: gzip", level 6 and the same types and
# min length on both sides — the cost of compressing per response.
scenario_gzip() {
    start_backend
    start_pair gzip /json20k
    run_ab gzip /json20k -H 'Accept-Encoding: gzip'
    stop_pair
}

# asset_cache: a 100 KiB hashed JS asset. astron-edge serves it from its in-memory
# asset cache (cache = "immutable" + [cache]); nginx proxies every request to the
# backend as the compose stack ships it (expires 1y + add_header Cache-Control
# "public, immutable", no proxy_cache). Measured twice on the same pair: without
# Accept-Encoding (asset_cache), and as browsers ask (asset_cache_gzip: nginx gzips
# each response, astron-edge sends its stored gzip variant).
scenario_asset_cache() {
    local path=/assets/app.3f2a1b.js
    start_backend
    start_pair asset_cache "$path"
    run_ab asset_cache "$path"
    mkdir -p "$TMP/asset_cache_gzip"
    run_ab asset_cache_gzip "$path" -H 'Accept-Encoding: gzip'
    stop_pair
}

# telemetry: the "small" request three ways, interleaved in every round —
#   nginx-log   nginx with its access log on (bench/nginx/telemetry.inc)
#   edge-off    astron-edge as in "small": no access log, no metrics, no OTLP
#   edge-full   astron-edge with the access log to a file, the Prometheus listener and
#               OTLP traces (every request) + metrics over http/protobuf to a local sink
#               (an nginx answering 200, on the load CPU; bench/edge/telemetry.toml.tmpl)
# Verdicts: edge-full/edge-off (the cost of observability; target ≤ 10 % of req/s and of
# CPU per request) and edge-full/nginx-log. Every thread of astron-edge (access-log
# writer, OTLP exporter) runs on the proxy's CPU and is in its cpu/10k.
scenario_telemetry() {
    local scen=telemetry path=/small round slot pair sink_port metrics_port
    local -a slots=(nginx-log edge-off edge-full) order
    if [[ $SELF_TEST == 1 ]]; then
        log "telemetry: no self-test variant (it compares astron-edge with itself); skipped"
        return 0
    fi
    start_backend
    sink_port=$(free_port)
    mkdir -p "$TMP/$scen/otlp-sink"
    render "$BENCH_DIR/nginx/otlp-sink.conf.tmpl" "$TMP/$scen/otlp-sink/nginx.conf" \
        DIR="$TMP/$scen/otlp-sink" PORT="$sink_port"
    start_nginx otlp-sink "$TMP/$scen/otlp-sink/nginx.conf" "$LOAD_CPU"
    local sink_pid=$REPLY_PID
    start_nginx_proxy nginx-log "$scen"
    start_edge_proxy edge-off small
    metrics_port=$(free_port)
    mkdir -p "$TMP/$scen/edge-full/log"
    start_edge_proxy edge-full "$scen" OTLP_PORT="$sink_port" METRICS_PORT="$metrics_port"
    for slot in "${slots[@]}"; do
        wait_http "http://127.0.0.1:${SLOT_PORT[$slot]}$path" 150 \
            || die "$slot (${SLOT_KIND[$slot]}) did not answer 200 on $path"
        log "$slot: ${SLOT_KIND[$slot]} on 127.0.0.1:${SLOT_PORT[$slot]} (pid ${SLOT_PID[$slot]}, cpu $PROXY_CPU)"
    done

    echo
    echo "== scenario $scen: GET $path, wrk -t1 -c$CONNECTIONS -d${DURATION}s, $ROUNDS rounds of ${slots[*]}"
    printf '  %-6s %-9s %10s %10s %10s %8s %9s %7s %7s %7s %8s\n' round proxy "req/s" p50 p99 "cpu_s" "cpu/10k" "cpu%" "core%" errors "other%"
    for ((round = 1; round <= ROUNDS; round++)); do
        # ORDER=abba: rotate the three, so no configuration always runs first
        order=("${slots[@]}")
        [[ $ORDER == abba ]] && order=("${slots[@]:round % 3}" "${slots[@]:0:round % 3}")
        for slot in "${order[@]}"; do
            measure "$scen" "$round" "$slot" "$path"
        done
        print_round "$scen" "$round"
    done
    # The pairs summarize() compares: B/A.
    local SLOT_A_NAME SLOT_B_NAME
    for pair in "edge-off edge-full" "nginx-log edge-full" "nginx-log edge-off"; do
        read -r SLOT_A_NAME SLOT_B_NAME <<<"$pair"
        summarize "$scen"
    done
    local counters
    counters=$(curl -s --max-time 2 "http://127.0.0.1:$metrics_port/metrics" \
        | grep -E '^edge_(access_log_dropped|otlp_spans_dropped)_total' | tr '\n' ' ')
    echo "  edge-full drops: ${counters:-(metrics not readable)}; access log: $(wc -l <"$TMP/$scen/edge-full/log/access.log") lines"

    for slot in "${slots[@]}"; do
        stop_pid "${SLOT_PID[$slot]}"
        forget_pid "${SLOT_PID[$slot]}"
        unset "SLOT_PID[$slot]"
    done
    stop_pid "$sink_pid"
    forget_pid "$sink_pid"
}

# name → function; "all" runs them in this order.
# sse: STREAMS (9800) concurrent SSE streams held HOLD (30) s through each proxy in turn,
# with its own backend and client (target/release/examples/sse_bench); see bench/sse.sh.
scenario_sse() {
    EDGE_BIN="$EDGE_BIN" PROXY_CPU="$PROXY_CPU" LOAD_CPU="$LOAD_CPU" "$BENCH_DIR/sse.sh"
}

SCENARIO_NAMES=(small gzip asset_cache telemetry sse)
declare -A SCENARIOS=(
    [sse]=scenario_sse
    [telemetry]=scenario_telemetry
    [small]=scenario_small_get
    [gzip]=scenario_gzip
    [asset_cache]=scenario_asset_cache
)

# ---------------------------------------------------------------------------
main() {
    local -a wanted=()
    while (($#)); do
        case $1 in
            --self-test) SELF_TEST=1 ;;
            --list) printf '%s\n' "${SCENARIO_NAMES[@]}"; exit 0 ;;
            --test-parser) test_parser; exit $? ;;
            -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
            all) wanted+=("${SCENARIO_NAMES[@]}") ;;
            -*) die "unknown option $1" ;;
            *) [[ -n ${SCENARIOS[$1]:-} ]] || die "unknown scenario '$1' (have: ${SCENARIO_NAMES[*]})"
               wanted+=("$1") ;;
        esac
        shift
    done
    ((${#wanted[@]})) || wanted=(small)
    [[ $SELF_TEST == 1 ]] && SLOT_B_NAME=nginx-b

    local tool
    for tool in wrk curl taskset ss pgrep getconf awk "$NGINX_BIN"; do
        command -v "$tool" >/dev/null || die "missing tool: $tool"
    done
    local ncpu
    ncpu=$(nproc)
    if ((ncpu < 2)) || ! taskset -c "$PROXY_CPU" true 2>/dev/null || ! taskset -c "$LOAD_CPU" true 2>/dev/null; then
        die "need CPUs $PROXY_CPU and $LOAD_CPU for pinning (have $ncpu); set PROXY_CPU/LOAD_CPU"
    fi
    ((ROUNDS >= 1 && DURATION >= 1)) || die "ROUNDS and DURATION must be >= 1"
    [[ $ORDER == ab || $ORDER == abba ]] || die "ORDER must be ab or abba"

    if ! nice -n "$BENCH_NICE" true 2>/dev/null || [[ $(nice -n "$BENCH_NICE" nice) != "$BENCH_NICE" ]]; then
        log "cannot run at nice $BENCH_NICE (not root?); using 0 — other load on the machine will show more"
        BENCH_NICE=0
    fi

    # Raise the open-file limit as far as allowed.
    ulimit -n 65535 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

    TMP=$(mktemp -d "${TMPDIR:-/tmp}/astron-edge-bench.XXXXXX")
    chmod 755 "$TMP"   # nginx workers may run as another user
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    boost_autogroup
    RESULTS="$TMP/results.tsv"
    : >"$RESULTS"
    : >"$RESULTS.summary"

    log "rounds=$ROUNDS order=$ORDER duration=${DURATION}s warmup=${WARMUP}s connections=$CONNECTIONS proxy_cpu=$PROXY_CPU load_cpu=$LOAD_CPU nice=$BENCH_NICE nofile=$(ulimit -n)"
    [[ $SELF_TEST == 1 ]] && log "SELF-TEST: nginx runs in both slots; expect ratios ≈ 1.0" \
                          || log "astron-edge: $EDGE_BIN"

    local s
    for s in "${wanted[@]}"; do
        "${SCENARIOS[$s]}"
    done

    if [[ -n ${RESULTS_DIR:-} ]]; then
        mkdir -p "$RESULTS_DIR"
        local stamp
        stamp=$(date +%Y%m%d-%H%M%S)
        {
            printf 'scenario\tround\tproxy\trps\tp50_us\tp99_us\tcpu_s\tcpu_per_10k\tcpu_pct\trequests\terrors\tother_cpu_pct\tproxy_core_pct\n'
            cat "$RESULTS" "$RESULTS.summary"
        } >"$RESULTS_DIR/bench-$stamp.tsv"
        log "raw results: $RESULTS_DIR/bench-$stamp.tsv"
    fi
}

# `exit` on the same line: bash reads a script as it runs, so without it an
# edit of this file during a run would be read (and run) after main returns.
main "$@"; exit "$?"
