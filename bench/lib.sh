# The harness shared by bench/instructions.sh, bench/contend.sh and bench/pgo.sh: their common
# settings, a temp dir cleaned up at exit, bench/run.sh's nginx backend (same config and
# bodies), an OTLP sink, the command line of each proxy configuration and its start. Sourced,
# not run; expects
# BENCH_DIR, REPO_DIR, CONNECTIONS and LOG_TAG.

EDGE_BIN=${EDGE_BIN:-$REPO_DIR/target/release/astron-edge}
BARE_BIN=${BARE_BIN:-$REPO_DIR/target/release/examples/bare_proxy}
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || echo /usr/sbin/nginx)}
REQUEST_PATH=${REQUEST_PATH:-/small}
NGINX_SCENARIO=${NGINX_SCENARIO:-small}
WRK_ARGS=(-t1 -c"$CONNECTIONS")
[[ ${ACCEPT_GZIP:-0} == 1 ]] && WRK_ARGS+=(-H "Accept-Encoding: gzip")

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

require_tools() {  # require_tools TOOL...
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool not found (apt-get install valgrind wrk nginx curl)"
    done
    if [[ ! -x $EDGE_BIN || ! -x $BARE_BIN ]]; then
        log "building (cargo build --release) ..."
        (cd "$BENCH_DIR/.." && cargo build --release --bin astron-edge --example bare_proxy)
    fi
}

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

start_backend() {  # start_backend [TASKSET_CPU] — sets BACKEND_PORT
    local pin=()
    [[ -n ${1:-} ]] && pin=(taskset -c "$1")
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
    "${pin[@]}" "$NGINX_BIN" -p "$TMP/backend" -c "$TMP/backend/nginx.conf" &
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$BACKEND_PORT/backend-health" || die "backend did not start"
}

start_otlp_sink() {  # start_otlp_sink [TASKSET_CPU] — accepts and discards; sets OTLP_PORT
    local pin=()
    [[ -n ${1:-} ]] && pin=(taskset -c "$1")
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
    "${pin[@]}" "$NGINX_BIN" -c "$TMP/otlp-sink.conf" -p "$TMP" &
    PIDS+=("$!")
}

proxy_command() {  # proxy_command CONFIG PORT [SLOT] — sets CMD: `bare`, `nginx` or an edge template
    local config=$1 port=$2 slot=${3:-$1} tmpl
    if [[ $config == bare ]]; then
        CMD=("$BARE_BIN" "127.0.0.1:$port" "127.0.0.1:$BACKEND_PORT")
    elif [[ $config == nginx ]]; then
        mkdir -p "$TMP/$slot/tmp"
        python3 - "$BENCH_DIR/nginx/proxy.conf.tmpl" "$BENCH_DIR/nginx/$NGINX_SCENARIO.inc" "$TMP/$slot/nginx.conf" \
            "$TMP/$slot" "$port" "$BACKEND_PORT" <<'PY'
import sys
tmpl, inc, out, slot, port, backend = sys.argv[1:]
text = open(tmpl).read().replace("@SCENARIO@", open(inc).read())
text = text.replace("master_process on;", "master_process off;")  # one process to count
for key, value in (("SLOTDIR", slot), ("PORT", port), ("BACKEND_PORT", backend)):
    text = text.replace("@" + key + "@", value)
open(out, "w").write(text)
PY
        CMD=("$NGINX_BIN" -p "$TMP/$slot" -c "$TMP/$slot/nginx.conf")
    else
        tmpl="$BENCH_DIR/edge/$config.toml.tmpl"
        [[ -f $tmpl ]] || die "no template $tmpl"
        mkdir -p "$TMP/$slot/log"
        sed -e "s/@PORT@/$port/g" -e "s/@BACKEND_PORT@/$BACKEND_PORT/g" \
            -e "s|@SLOTDIR@|$TMP/$slot|g" -e "s/@METRICS_PORT@/$(free_port)/g" \
            -e "s/@OTLP_PORT@/${OTLP_PORT:-0}/g" "$tmpl" >"$TMP/$slot/astron-edge.toml"
        grep -qE '@[A-Z_]+@' "$TMP/$slot/astron-edge.toml" && die "unrendered placeholder in $tmpl"
        CMD=("$EDGE_BIN" run -c "$TMP/$slot/astron-edge.toml")
    fi
}

start_proxy() {  # start_proxy NAME URL [WRAPPER...] — runs CMD (see proxy_command) in the
                 # background under WRAPPER (taskset, valgrind), its output in $TMP/NAME.log,
                 # stopped at exit; waits until URL answers 200. Sets PROXY_PID.
    local name=$1 url=$2
    shift 2
    RUST_LOG=warn "$@" "${CMD[@]}" >"$TMP/$name.log" 2>&1 &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    wait_http "$url" || { tail -20 "$TMP/$name.log" >&2; die "$name (${CMD[*]}) did not start"; }
}
