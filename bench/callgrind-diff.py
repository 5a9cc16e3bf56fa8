#!/usr/bin/env python3
"""Per-request difference of two callgrind dumps of the same workload, function by function.

    python3 bench/callgrind-diff.py OLD_DUMP NEW_DUMP [--per FUNCTION] [--top N]

Each function's inclusive instructions (callgrind_annotate --inclusive=yes) are divided by
the number of requests in its dump, counted as the calls of FUNCTION (default:
`upstream_request_filter`, once per proxied request), and the functions that moved most are
printed, largest decrease first and largest increase last. Used for the commit-by-commit
table of bench/RESULTS.md (2026-12-05).
"""
import argparse
import re
import subprocess

ROW = re.compile(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+\*\s+(.*)$")


def load(dump, per):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--tree=calling", "--threshold=100", dump],
        capture_output=True, text=True, check=True,
    ).stdout
    calls = re.compile(re.escape(per) + r"[^ ]* \(([\d,]+)x\)")
    costs, requests = {}, None
    for line in out.splitlines():
        row = ROW.match(line)
        if row:
            costs[row.group(2).split(" [")[0]] = int(row.group(1).replace(",", ""))
        found = calls.search(line)
        if found and requests is None:
            requests = int(found.group(1).replace(",", ""))
    if not requests:
        raise SystemExit(f"{dump}: no calls of {per}")
    return costs, requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--per", default="upstream_request_filter")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    (old, old_n), (new, new_n) = load(args.old, args.per), load(args.new, args.per)
    print(f"requests: {old_n} old, {new_n} new; instructions per request:")
    rows = sorted(
        (new.get(k, 0) / new_n - old.get(k, 0) / old_n, old.get(k, 0) / old_n, new.get(k, 0) / new_n, k)
        for k in set(old) | set(new)
    )
    for delta, before, after, name in rows[: args.top] + rows[-args.top :]:
        print(f"{delta:+9.0f} {before:9.0f} {after:9.0f}  {name[:140]}")


if __name__ == "__main__":
    main()
