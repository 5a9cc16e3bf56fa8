#!/usr/bin/env bash
# Stand-in for the astron-edge binary, for testing the harness's astron-edge
# code path (config rendering, `check`, `run -c`, readiness, PID accounting)
# before astron-edge exists:
#
#   EDGE_BIN=bench/edge-shim.sh bench/run.sh small
#
# `check -c FILE` parses the TOML (python3 tomllib) and checks the settings
# every bench config must have (threads = 1, access log off, no metrics); `run -c FILE` execs an nginx (1 worker, same proxy
# settings as the reference) listening where [server] listen says and proxying
# to [upstreams.backend] servers[0]. Only for the bench's simple configs.
set -euo pipefail

cmd=${1:-}; shift || true
[[ ${1:-} == -c && -n ${2:-} ]] || { echo "usage: $0 check|run -c FILE" >&2; exit 2; }
conf=$2

read_conf() {
    python3 - "$conf" <<'PY'
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
# (unknown keys are the real binary's business: `astron-edge check` rejects them)
listen = c["server"]["listen"][0]
backend = c["upstreams"]["backend"]["servers"][0]
assert c["server"].get("threads") == 1, "threads must be 1 for the bench"
assert c["access_log"]["path"] == "off"
assert "metrics" not in c, "no metrics listener in the bench"
print(listen, backend)
PY
}

case $cmd in
    check)
        read_conf >/dev/null
        echo "shim: $conf OK"
        ;;
    run)
        read -r listen backend < <(read_conf)
        # next to the config, so whoever owns the config's directory (the
        # harness's temp dir) cleans it up
        dir="$(cd "$(dirname "$conf")" && pwd)/edge-shim"
        mkdir -p "$dir/tmp"
        cat >"$dir/nginx.conf" <<NGX
worker_processes 1;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    upstream backend { server $backend; keepalive 64; keepalive_requests 1000000; }
    server {
        listen $listen;
        gzip off;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
NGX
        exec "${NGINX_BIN:-nginx}" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
        ;;
    *) echo "shim: unsupported command '$cmd'" >&2; exit 2 ;;
esac
