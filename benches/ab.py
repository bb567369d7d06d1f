#!/usr/bin/env python3
"""Before/after timing of eia builds on a machine whose speed drifts: runs each workload on every
binary back to back (`eia run --json`), the binaries' order reversed every other round, and prints
per workload each binary's median time (and % of a copy of the same bytes, for memory-bound
workloads) and its median per-round time ratio to the first binary (< 1: faster).

Usage: python3 benches/ab.py ROUNDS BIN_A BIN_B [BIN ...] --filter ID [--filter ID ...]
       [--dtype fp32|fp16] [--seconds S] [--threads N]

A binary may be a script that sets environment variables and execs eia. Adjacent runs of one
workload share the machine's phase; reversing the order cancels what running first or second
costs. Timing the same binary twice as A and B shows the noise left (report it beside a result).
"""
import argparse
import json
import statistics as st
import subprocess

ap = argparse.ArgumentParser()
ap.add_argument("rounds", type=int)
ap.add_argument("bins", nargs="+")
ap.add_argument("--filter", action="append", required=True, help="a workload id or part of one")
ap.add_argument("--dtype")
ap.add_argument("--seconds", default="0.2")
ap.add_argument("--threads")
a = ap.parse_args()
if len(a.bins) < 2:
    ap.error("two binaries or more")

times = {}  # (binary, workload id, dtype) -> [(median s, copy median s or None)] per round
for r in range(a.rounds):
    for f in a.filter:
        for b in a.bins if r % 2 == 0 else a.bins[::-1]:
            cmd = [b, "run", "--json", "--seconds", a.seconds, "--filter", f]
            cmd += ["--dtype", a.dtype] if a.dtype else []
            cmd += ["--threads", a.threads] if a.threads else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            for line in filter(lambda l: l.startswith("{"), out.splitlines()):
                j = json.loads(line)
                times.setdefault((b, j["id"], j["dtype"]), []).append(
                    (j["median_s"], j.get("copy_median_s"))
                )

first = a.bins[0]
for wid, dtype in sorted({(k[1], k[2]) for k in times}):
    base = [t for t, _ in times[(first, wid, dtype)]]
    row = f"{wid:40s} {dtype:5s}"
    for b in a.bins:
        runs = times[(b, wid, dtype)]
        row += f" | {b.split('/')[-1]} {st.median(t for t, _ in runs) * 1e3:.4f} ms"
        copies = [c / t for t, c in runs if c]
        if copies:
            row += f" {100 * st.median(copies):.0f}% of copy"
        if b != first:
            ratios = [t / t0 for (t, _), t0 in zip(runs, base)]
            row += f" ratio {st.median(ratios):.3f} ({min(ratios):.2f}-{max(ratios):.2f})"
    print(row, flush=True)
