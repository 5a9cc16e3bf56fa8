#!/usr/bin/env python3
"""Where a proxy's instructions go, grouped by what the code does, from a callgrind dump.

    bench/callgrind-groups.py DUMP REQUESTS [--top N] [--files] [--callers FUNC_REGEX]

DUMP is a callgrind output file of `bench/instructions.sh` (the measured window only);
REQUESTS the requests wrk completed in it (instructions.sh logs it). Prints instructions per
request per group.

Why not `callgrind_annotate`: with fat LTO most of Pingora, tokio and `http` is inlined into a
few large functions (the proxy's phase futures), so a per-function table says "Pingora's
future" and little else. A binary built with line tables (CARGO_PROFILE_RELEASE_DEBUG=
line-tables-only: the same code, only more debug sections) lets callgrind attribute every
instruction to the source file it was inlined from (its `fi=`/`fe=` records), and the groups
below are made of source files, whatever function they ended up in. Self cost only: every
instruction counts once, so the groups add up to the total.

--files lists the top source files themselves; --callers REGEX lists who calls the functions
matching REGEX (inclusive cost of those call edges, per request), e.g. `^memcpy` to see which
code moves the most bytes.
"""
import re
import sys
from collections import defaultdict

# (group, regex on "object|source file|function"), first match wins. Ordered from the most
# specific to the catch-alls.
GROUPS = [
    ("alloc/free (jemalloc, malloc)", r"jemalloc|/malloc\.c|\|(__libc_)?(malloc|free|realloc|calloc|cfree)\b|tikv.jemalloc|alloc/src/alloc\.rs|alloc/src/raw_vec|sdallocx|mallocx|\|je_|_rjem_"),
    ("memcpy/memmove/memset (moves of futures, buffers)", r"\|(__)?mem(cpy|move|set)|memcpy|memmove|memset"),
    ("tokio mpsc channels (Pingora's HttpTask channels)", r"tokio-[0-9.]+/src/sync/(mpsc|batch_semaphore|task/atomic_waker)|tokio-[0-9.]+/src/sync/semaphore"),
    ("tokio I/O driver, readiness, epoll", r"tokio-[0-9.]+/src/(runtime/io|io/|net/)|mio-[0-9.]+/src|\|epoll_wait"),
    ("tokio timers (timeouts, sleep)", r"tokio-[0-9.]+/src/(runtime/time|time/)|pingora-timeout"),
    ("tokio scheduler, task wake-ups, spawn", r"tokio-[0-9.]+/src/(runtime|task|loom|util)|tokio-[0-9.]+/src/sync/notify|futures-(util|core)|/std/src/thread/local|/core/src/task/"),
    ("pingora connection pool get/put", r"pingora-pool|connectors/(mod|l4|offload)\.rs|upstreams/peer\.rs|lru|thread_local|crossbeam|parking_lot|arc.swap"),
    ("header maps and Bytes (http::HeaderMap, Request/ResponseHeader build, clone, drop)", r"http-1\.[0-9.]+/src/header|pingora-http|HeaderMap|drop_in_place<(http::header|pingora_http)|http-1\.[0-9.]+/src/(uri|method|status|version|request|response|extensions)|case_header|/small_str|bytes-1"),
    ("HTTP/1 parsing (httparse) and serialising", r"httparse|protocols/http/v1/(common|body)\.rs|itoa"),
    ("pingora HTTP/1 sessions (client and server)", r"protocols/http/v1/(client|server)\.rs|protocols/http/(server|client|body_buffer|conditional_filter|mod)\.rs|protocols/http/compression|compression/"),
    ("pingora streams, socket digests, syscall wrappers", r"protocols/(l4|digest|raw_connect|mod|tls|windows)|protocols/l4/|\|(__)?(libc_)?(write|writev|read|recv|send|sendto|recvfrom|clock_gettime|__vdso|getsockopt|setsockopt|accept4|close|sched_yield|syscall|futex)\b|libc\.so|ld-linux|vdso"),
    ("pingora proxy pipeline (phases, HttpTask relay between the halves)", r"pingora-proxy|pingora-core-[0-9.]+/src/(apps|services|server|listeners|modules)|pingora-cache|async_trait|pingora-error"),
    ("astron-edge's own code (routing, filters, telemetry)", r"\|(/work/[^|]*/)?(src|examples)/[^|]*\||\|astron_edge::"),
    ("Rust std/core/alloc (other)", r"/rustc/|library/(core|alloc|std)"),
]
COMPILED = [(name, re.compile(rx)) for name, rx in GROUPS]


def parse(path):
    """Yields (object, file, function, self_ir) and (caller, callee, inclusive_ir) totals."""
    names = {"ob": {}, "fl": {}, "fn": {}}
    kind_of = {"ob": "ob", "cob": "ob", "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl",
               "cfl": "fl", "fn": "fn", "cfn": "fn"}
    self_cost = defaultdict(int)
    edges = defaultdict(int)
    ob = fl = fi = fn = cfn = ""
    npos = 1
    pending_call = False
    spec = re.compile(r"^(ob|fl|fi|fe|fn|cob|cfi|cfl|cfn)=(?:\((\d+)\))?\s*(.*)$")
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                costs = parts[npos:]
                ir = int(costs[0]) if costs else 0
                if pending_call:
                    edges[(fn, cfn)] += ir
                    pending_call = False
                else:
                    self_cost[(ob, fi, fn)] += ir
                continue
            if line.startswith("positions:"):
                npos = len(line.split()[1:])
                continue
            if line.startswith("calls="):
                pending_call = True
                continue
            m = spec.match(line)
            if not m:
                continue
            key, ident, name = m.groups()
            table = names[kind_of[key]]
            if ident is not None:
                if name:
                    table[ident] = name
                name = table.get(ident, name)
            if key == "ob":
                ob = name
            elif key == "fl":
                fl = fi = name
            elif key in ("fi", "fe"):
                fi = name
            elif key == "fn":
                fn = name
                fi = fl
            elif key == "cfn":
                cfn = name
    return self_cost, edges


def group_of(ob, fi, fn):
    subject = f"{ob}|{fi}|{fn}"
    for name, rx in COMPILED:
        if rx.search(subject):
            return name
    return "other"


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    dump, requests = args[0], int(args[1])
    top = int(args[args.index("--top") + 1]) if "--top" in args else 40
    self_cost, edges = parse(dump)
    total = sum(self_cost.values())
    groups = defaultdict(int)
    for (ob, fi, fn), ir in self_cost.items():
        groups[group_of(ob, fi, fn)] += ir
    print(f"{dump}: {total:,} Ir, {requests:,} requests, {total / requests:,.0f} Ir/request")
    print(f"{'group':<82} {'Ir/req':>8} {'share':>6}")
    for name, ir in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"{name:<82} {ir / requests:>8,.0f} {100 * ir / total:>5.1f}%")
    if "--files" in args:
        files = defaultdict(int)
        for (ob, fi, fn), ir in self_cost.items():
            files[(fi, group_of(ob, fi, fn))] += ir
        print(f"\ntop {top} source files (self cost, inlined code counted where it came from)")
        for (fi, g), ir in sorted(files.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{ir / requests:>8,.0f}  {fi[-90:]:<90}  [{g.split(' (')[0]}]")
    if "--callers" in args:
        rx = re.compile(args[args.index("--callers") + 1])
        callers = defaultdict(int)
        for (caller, callee), ir in edges.items():
            if rx.search(callee):
                callers[caller] += ir
        print(f"\ncallers of /{rx.pattern}/ (inclusive cost of the calls, per request)")
        for caller, ir in sorted(callers.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{ir / requests:>8,.0f}  {caller[:150]}")


if __name__ == "__main__":
    main()
