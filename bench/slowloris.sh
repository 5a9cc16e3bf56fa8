#!/usr/bin/env bash
# Slowloris against nginx and astron-edge side by side (issue 18, item 3).
#
# Both proxies front the same nginx backend. For DURATION seconds, N attacker connections
# per proxy each send a request header slowly and never finish it (CHUNK bytes every
# INTERVAL seconds; a connection the proxy closes is opened again at once, as an attacker
# keeps its count up), while a probe sends an ordinary GET to each proxy every 200 ms.
# Reported per proxy: peak RSS (VmHWM of every process of the proxy, summed), the probe's
# latency before and during the attack (p50 / p99 / max), failed probes, and how many
# attacker connections the proxy closed (408/431/400 or plain close).
#
# Usage: bench/slowloris.sh            (N=200 DURATION=120 CHUNK=1024 INTERVAL=2)
#        N=500 DURATION=60 bench/slowloris.sh
# Needs: a release build (target/release/astron-edge; a dev build's RSS says nothing),
# nginx (/usr/sbin/nginx), python3. Runs everything on 127.0.0.1 on free ports.
set -euo pipefail

N=${N:-200}
DURATION=${DURATION:-120}
CHUNK=${CHUNK:-1024}
INTERVAL=${INTERVAL:-2}
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
EDGE_BIN=${EDGE_BIN:-$REPO_DIR/target/release/astron-edge}
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}

[[ -x $EDGE_BIN ]] || { echo "no $EDGE_BIN: cargo build --release first" >&2; exit 1; }
[[ -x $NGINX_BIN ]] || { echo "no nginx at $NGINX_BIN" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -f $TMP/backend/nginx.pid ]] && kill "$(cat "$TMP/backend/nginx.pid")" 2>/dev/null || true
    [[ -f $TMP/front/nginx.pid ]] && kill "$(cat "$TMP/front/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND_PORT=$(free_port)
NGINX_PORT=$(free_port)
EDGE_PORT=$(free_port)

nginx_conf() {  # nginx_conf DIR BODY
    mkdir -p "$1/logs"
    cat > "$1/nginx.conf" <<EOF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/logs/error.log crit;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1;
  uwsgi_temp_path $1; scgi_temp_path $1;
  $2
}
EOF
}
nginx_conf "$TMP/backend" "server { listen 127.0.0.1:$BACKEND_PORT; location / { return 200 \"ok\n\"; } }"
# The front nginx as the stack's: proxy_pass, its defaults for client headers (60 s, 4 x 8k).
nginx_conf "$TMP/front" "upstream app { server 127.0.0.1:$BACKEND_PORT; keepalive 32; }
  server { listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
"$NGINX_BIN" -p "$TMP/backend" -c "$TMP/backend/nginx.conf"
"$NGINX_BIN" -p "$TMP/front" -c "$TMP/front/nginx.conf"

cat > "$TMP/edge.toml" <<EOF
[server]
listen = ["127.0.0.1:$EDGE_PORT"]
threads = 1
[access_log]
path = "off"
[upstreams.app]
servers = ["127.0.0.1:$BACKEND_PORT"]
[[routes]]
name = "app"
prefix = "/"
upstream = "app"
EOF
RUST_LOG=warn "$EDGE_BIN" run -c "$TMP/edge.toml" 2> "$TMP/edge.err" &
PIDS+=($!)
EDGE_PID=$!
for _ in $(seq 1 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$EDGE_PORT/" && curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && break
    sleep 0.1
done
NGINX_PIDS="$(cat "$TMP/front/nginx.pid") $(pgrep -P "$(cat "$TMP/front/nginx.pid")" | tr '\n' ' ')"

echo "slowloris: N=$N per proxy, ${DURATION}s, $CHUNK bytes every ${INTERVAL}s per connection"
python3 - "$NGINX_PORT" "$EDGE_PORT" "$N" "$DURATION" "$CHUNK" "$INTERVAL" "$NGINX_PIDS" "$EDGE_PID" <<'PY'
import asyncio, statistics, sys, time

nginx_port, edge_port, n, duration, chunk, interval = map(int, sys.argv[1:7])
pids = {"nginx": [int(p) for p in sys.argv[7].split()], "astron-edge": [int(sys.argv[8])]}
ports = {"nginx": nginx_port, "astron-edge": edge_port}

def hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0

def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

async def probe(port, until, out, failures):
    while time.monotonic() < until:
        t = time.monotonic()
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            w.write(b"GET /probe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(r.read(), 5)
            w.close()
            if not data.startswith(b"HTTP/1.1 200"):
                failures.append(data[:40])
            else:
                out.append((time.monotonic() - t) * 1000)
        except Exception as e:
            failures.append(repr(e))
        await asyncio.sleep(0.2)

async def attacker(port, until, closed):
    while time.monotonic() < until:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.1\r\nHost: t\r\n")
            while time.monotonic() < until:
                w.write(b"X-Slow: " + b"a" * max(chunk - 10, 1) + b"\r\n")
                await w.drain()
                try:
                    await asyncio.wait_for(r.read(256), interval)
                    closed[0] += 1  # answered (408/431/400) or closed: the proxy let go
                    break
                except asyncio.TimeoutError:
                    pass
            w.close()
        except Exception:
            closed[0] += 1
            await asyncio.sleep(0.05)

def summary(name, lat):
    if not lat:
        return f"{name}: no successful probe"
    lat = sorted(lat)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return f"p50 {statistics.median(lat):.2f} ms  p99 {p99:.2f} ms  max {lat[-1]:.2f} ms  ({len(lat)} probes)"

async def main():
    base = {k: [] for k in ports}
    fails = {k: [] for k in ports}
    until = time.monotonic() + 5
    await asyncio.gather(*(probe(p, until, base[k], fails[k]) for k, p in ports.items()))
    rss0 = {k: sum(rss(p) for p in v) for k, v in pids.items()}
    attack = {k: [] for k in ports}
    closed = {k: [0] for k in ports}
    until = time.monotonic() + duration
    peak = {k: 0 for k in ports}
    async def sample():
        while time.monotonic() < until:
            for k, v in pids.items():
                peak[k] = max(peak[k], sum(rss(p) for p in v))
            await asyncio.sleep(0.5)
    tasks = [sample()]
    for k, p in ports.items():
        tasks.append(probe(p, until, attack[k], fails[k]))
        tasks += [attacker(p, until, closed[k]) for _ in range(n)]
    await asyncio.gather(*tasks)
    for k in ports:
        print(f"== {k}")
        print(f"  RSS before attack {rss0[k]/1024:.1f} MiB, peak during attack {peak[k]/1024:.1f} MiB "
              f"(VmHWM {sum(hwm(p) for p in pids[k])/1024:.1f} MiB)")
        print(f"  probe before:  {summary(k, base[k])}")
        print(f"  probe during:  {summary(k, attack[k])}")
        print(f"  failed probes: {len(fails[k])} {fails[k][:3]}")
        print(f"  attacker connections closed by the proxy: {closed[k][0]}")

asyncio.run(main())
PY
