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
EDGE_BIN=${EDGE_BIN:-$REPO_DIR/target/release/astron-edge}
BARE_BIN=${BARE_BIN:-$REPO_DIR/target/release/examples/bare_proxy}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
REQUEST_PATH=${REQUEST_PATH:-/small}
NGINX_SCENARIO=${NGINX_SCENARIO:-small}
WRK_ARGS=(-t1 -c"$CONNECTIONS")
[[ ${ACCEPT_GZIP:-0} == 1 ]] && WRK_ARGS+=(-H "Accept-Encoding: gzip")
CONFIGS=("$@")
[[ ${#CONFIGS[@]} -gt 0 ]] || CONFIGS=(bare small telemetry)

log() { printf '[instructions] %s\n' "$*" >&2; }
die() { printf '[instructions] ERROR: %s\n' "$*" >&2; exit 1; }

for tool in valgrind callgrind_control wrk curl "$NGINX_BIN"; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install valgrind wrk nginx curl)"
done
if [[ ! -x $EDGE_BIN || ! -x $BARE_BIN ]]; then
    log "building (cargo build --release) ..."
    (cd "$REPO_DIR" && cargo build --release --bin astron-edge --example bare_proxy)
fi
mkdir -p "$OUT_DIR"

TMP=$(mktemp -d)
chmod 755 "$TMP"   # the backend nginx worker (www-data) reads the payloads from here
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() {  # wait_http URL — valgrind starts slowly: up to 60 s
    for _ in $(seq 1 600); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null) == 200 ]] && return 0
        sleep 0.1
    done
    return 1
}

# The backend: bench/run.sh's nginx backend, same config and bodies.
# shellcheck source=bench/payloads.sh
source "$BENCH_DIR/payloads.sh"
BACKEND_PORT=$(free_port)
make_payloads "$TMP/www"
mkdir -p "$TMP/backend/tmp"
python3 - "$BENCH_DIR/nginx/backend.conf.tmpl" "$TMP/backend/nginx.conf" "$TMP" "$BACKEND_PORT" \
    "$(<"$TMP/www/small.txt")" <<'PY'
import sys
tmpl, out, directory, port, small = sys.argv[1:]
text = open(tmpl).read()
for key, value in (("DIR", directory), ("BACKEND_PORT", port), ("SMALL_BODY", small)):
    text = text.replace("@" + key + "@", value)
open(out, "w").write(text)
PY
"$NGINX_BIN" -p "$TMP/backend" -c "$TMP/backend/nginx.conf" &
PIDS+=("$!")
wait_http "http://127.0.0.1:$BACKEND_PORT/backend-health" || die "backend did not start"

# An OTLP sink for templates that export (telemetry): accepts and discards.
OTLP_PORT=$(free_port)
cat >"$TMP/otlp-sink.conf" <<CONF
worker_processes 1;
daemon off;
pid $TMP/otlp-sink.pid;
error_log $TMP/otlp-sink.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $TMP/backend;
    proxy_temp_path $TMP/backend;
    fastcgi_temp_path $TMP/backend;
    uwsgi_temp_path $TMP/backend;
    scgi_temp_path $TMP/backend;
    server { listen 127.0.0.1:$OTLP_PORT; location / { return 200; } }
}
CONF
"$NGINX_BIN" -c "$TMP/otlp-sink.conf" -p "$TMP" &
PIDS+=("$!")

declare -A IR_PER_REQ=()
for config in "${CONFIGS[@]}"; do
    port=$(free_port)
    out="$OUT_DIR/callgrind.$config"
    rm -f "$out" "$out".*
    if [[ $config == bare ]]; then
        cmd=("$BARE_BIN" "127.0.0.1:$port" "127.0.0.1:$BACKEND_PORT")
    elif [[ $config == nginx ]]; then
        mkdir -p "$TMP/nginx/tmp"
        python3 - "$BENCH_DIR/nginx/proxy.conf.tmpl" "$BENCH_DIR/nginx/$NGINX_SCENARIO.inc" "$TMP/nginx/nginx.conf" \
            "$TMP/nginx" "$port" "$BACKEND_PORT" <<'PY'
import sys
tmpl, inc, out, slot, port, backend = sys.argv[1:]
text = open(tmpl).read().replace("@SCENARIO@", open(inc).read())
text = text.replace("master_process on;", "master_process off;")  # one process to count
for key, value in (("SLOTDIR", slot), ("PORT", port), ("BACKEND_PORT", backend)):
    text = text.replace("@" + key + "@", value)
open(out, "w").write(text)
PY
        cmd=("$NGINX_BIN" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf")
    else
        tmpl="$BENCH_DIR/edge/$config.toml.tmpl"
        [[ -f $tmpl ]] || die "no template $tmpl"
        mkdir -p "$TMP/$config/log"
        sed -e "s/@PORT@/$port/g" -e "s/@BACKEND_PORT@/$BACKEND_PORT/g" \
            -e "s|@SLOTDIR@|$TMP/$config|g" -e "s/@METRICS_PORT@/$(free_port)/g" \
            -e "s/@OTLP_PORT@/$OTLP_PORT/g" "$tmpl" >"$TMP/$config/astron-edge.toml"
        grep -qE '@[A-Z_]+@' "$TMP/$config/astron-edge.toml" && die "unrendered placeholder in $tmpl"
        cmd=("$EDGE_BIN" run -c "$TMP/$config/astron-edge.toml")
    fi
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "${cmd[@]}" >"$TMP/$config.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_http "http://127.0.0.1:$port$REQUEST_PATH" || { tail -20 "$TMP/$config.log" >&2; die "$config did not start"; }
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
