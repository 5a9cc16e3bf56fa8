#!/usr/bin/env bash
# SSE scenario: STREAMS concurrent Server-Sent-Event streams through nginx and astron-edge,
# in front of the same backend, one proxy at a time, interleaved over ROUNDS.
#
#   bench/sse.sh                  (also reached as `bench/run.sh sse`)
#
# Environment: STREAMS=9800 (the process file limit here is 20,000: a proxy holds two
# descriptors per stream), HOLD=30 (seconds the streams are held), EVERY_MS=3000 (one event
# per stream every 3 s), ROUNDS=1, PROXY_CPU=0, LOAD_CPU=1, SSE_HEARTBEAT= (astron-edge's
# route `sse_heartbeat`, e.g. `1s`: comment lines in every gap between events; off when empty).
#
# Reports per proxy: streams lost, the RSS increase per held stream (KiB), the proxy's CPU
# time per relayed event over the hold (µs, from /proc), and the p50/p99 latency per event (receive time minus the backend's send stamp: the proxy's added latency
# plus the same loopback cost for both). A `direct` run (the client on the backend itself, no
# proxy) measures that floor, and the summary subtracts it: the added latency per proxy.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
STREAMS=${STREAMS:-9800}
HOLD=${HOLD:-30}
EVERY_MS=${EVERY_MS:-3000}
ROUNDS=${ROUNDS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
EDGE_BIN=${EDGE_BIN:-$REPO_DIR/target/release/astron-edge}
SSE_HEARTBEAT=${SSE_HEARTBEAT:-}
HEARTBEAT_LINE=${SSE_HEARTBEAT:+"sse_heartbeat = \"$SSE_HEARTBEAT\""}
SSE_BENCH=${SSE_BENCH:-$REPO_DIR/target/release/examples/sse_bench}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}

log() { printf '[sse] %s\n' "$*" >&2; }
die() { printf '[sse] ERROR: %s\n' "$*" >&2; exit 1; }

ulimit -n "$(ulimit -Hn)" || true
[[ $(ulimit -n) -ge $((STREAMS * 2 + 100)) ]] || die "ulimit -n $(ulimit -n) is too low for $STREAMS streams"

if [[ ! -x $EDGE_BIN || ! -x $SSE_BENCH ]]; then
    log "building (cargo build --release) ..."
    (cd "$REPO_DIR" && cargo build --release --bin astron-edge --example sse_bench)
fi

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -n ${KEEP_TMP:-} ]] || rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() {  # wait_http URL
    for _ in $(seq 1 200); do
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.05
    done
    return 1
}

cpu_ticks() {  # cpu_ticks PID... — summed user + system clock ticks
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

rss_kib() {  # rss_kib PID... — summed VmRSS
    local total=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

BACKEND_PORT=$(free_port)
taskset -c "$LOAD_CPU" "$SSE_BENCH" backend --listen "127.0.0.1:$BACKEND_PORT" --every-ms "$EVERY_MS" \
    >"$TMP/backend.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 1 100); do grep -q listening "$TMP/backend.log" && break; sleep 0.05; done

start_proxy() {  # start_proxy KIND PORT → sets PROXY_PIDS
    local kind=$1 port=$2 dir="$TMP/$1"
    mkdir -p "$dir"
    if [[ $kind == nginx ]]; then
        cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
daemon off;
events { worker_connections 20000; }
http {
    access_log off;
    client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
    uwsgi_temp_path $dir; scgi_temp_path $dir;
    upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$port;
        location = /health { return 200 "OK\n"; }
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 1800s;
        }
    }
}
CONF
        taskset -c "$PROXY_CPU" "$NGINX_BIN" -p "$dir" -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 &
    else
        cat >"$dir/edge.toml" <<CONF
[server]
listen = ["127.0.0.1:$port"]
threads = 1
[access_log]
path = "off"
[upstreams.backend]
servers = ["127.0.0.1:$BACKEND_PORT"]
[[routes]]
name = "sse"
prefix = "/"
upstream = "backend"
sse = true
timeout = "1800s"
$HEARTBEAT_LINE
CONF
        RUST_LOG=warn taskset -c "$PROXY_CPU" "$EDGE_BIN" run -c "$dir/edge.toml" >"$dir/out.log" 2>&1 &
    fi
    local main=$!
    PIDS+=("$main")
    wait_http "http://127.0.0.1:$port/health" || { cat "$dir"/*.log >&2; die "$kind did not start"; }
    PROXY_PIDS=("$main" $(pgrep -P "$main" || true))
}

run_one() {  # run_one KIND ROUND — KIND nginx, edge, or direct (no proxy: the floor)
    local kind=$1 round=$2 port out rss0=0 rss1=0 cpu0=0 cpu1=0 summary url
    if [[ $kind == direct ]]; then
        PROXY_PIDS=()
        url="http://127.0.0.1:$BACKEND_PORT/sse"
    else
        port=$(free_port)
        start_proxy "$kind" "$port"
        sleep 0.5
        rss0=$(rss_kib "${PROXY_PIDS[@]}")
        url="http://127.0.0.1:$port/sse"
    fi
    out="$TMP/client-$kind-$round.log"
    taskset -c "$LOAD_CPU" "$SSE_BENCH" client --url "$url" \
        --streams "$STREAMS" --hold-secs "$HOLD" >"$out" 2>&1 &
    local client=$!
    for _ in $(seq 1 1200); do grep -q '^established' "$out" && break; sleep 0.1; done
    [[ $kind == direct ]] || cpu0=$(cpu_ticks "${PROXY_PIDS[@]}")
    sleep "$(( HOLD / 2 ))"   # streams idle between events: the memory they hold
    [[ $kind == direct ]] || rss1=$(rss_kib "${PROXY_PIDS[@]}")
    wait "$client" || true
    [[ $kind == direct ]] || cpu1=$(cpu_ticks "${PROXY_PIDS[@]}")
    summary=$(grep '^streams=' "$out" || echo "streams=0 lost=$STREAMS events=0 p50_us=0 p99_us=0 max_us=0")
    if [[ $kind != direct ]]; then
        kill "${PROXY_PIDS[0]}" 2>/dev/null || true
        wait "${PROXY_PIDS[0]}" 2>/dev/null || true
    fi
    local per_stream events cpu_per_event
    per_stream=$(awk -v a="$rss0" -v b="$rss1" -v n="$STREAMS" 'BEGIN { printf "%.1f", (b - a) / n }')
    # CPU per relayed event over the hold (the streams are all established by then).
    events=$(sed -n 's/.* events=\([0-9]*\).*/\1/p' <<<"$summary")
    cpu_per_event=$(awk -v t="$((cpu1 - cpu0))" -v hz="$(getconf CLK_TCK)" -v e="${events:-0}" \
        'BEGIN { printf "%.1f", (e > 0 ? t * 1e6 / hz / e : 0) }')
    printf '%s\tround=%s\t%s\trss_before_kib=%s\trss_held_kib=%s\tkib_per_stream=%s\tcpu_us_per_event=%s\n' \
        "$kind" "$round" "$summary" "$rss0" "$rss1" "$per_stream" "$cpu_per_event" | tee -a "$TMP/results.tsv"
}

log "backend on 127.0.0.1:$BACKEND_PORT; $STREAMS streams, one event per ${EVERY_MS} ms, held ${HOLD} s, $ROUNDS round(s)"
for round in $(seq 1 "$ROUNDS"); do
    run_one direct "$round"
    run_one nginx "$round"
    run_one edge "$round"
done

median() {  # median KIND FIELD
    grep "^$1" "$TMP/results.tsv" | tr '\t ' '\n\n' | awk -F= -v f="$2" '$1 == f { print $2 }' \
        | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

echo
echo "median over rounds (direct = client straight to the backend: the harness's own floor):"
for kind in direct nginx edge; do
    for field in lost p50_us p99_us kib_per_stream cpu_us_per_event; do
        [[ $kind == direct && ( $field == kib_per_stream || $field == cpu_us_per_event ) ]] && continue
        printf '  %-6s %-15s %s\n' "$kind" "$field" "$(median "$kind" "$field")"
    done
done
echo "added latency per event (proxy minus direct, at the same percentile):"
for kind in nginx edge; do
    for field in p50_us p99_us; do
        printf '  %-6s %-15s %s\n' "$kind" "$field" \
            "$(awk -v a="$(median "$kind" "$field")" -v b="$(median direct "$field")" 'BEGIN { print a - b }')"
    done
done
