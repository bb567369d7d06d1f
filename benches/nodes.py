#!/usr/bin/env python3
"""A model node by node beside onnxruntime, on a machine whose speed drifts: each round runs
`eia infer MODEL --profile` and then onnxruntime's profiler on the same file, and prints per eia
node (a fused group of ONNX nodes) the median time of each over the rounds, the median per-round
ratio ort/eia (< 1: eia slower), and the time summed by node kind. An onnxruntime node counts
toward the eia node that fused it (by ONNX node name; onnxruntime's layout nodes, such as
ReorderInput, belong to none and only show in its total).

Usage: python3 benches/nodes.py MODEL.onnx [--rounds R] [--runs N] [--threads T] [--batch N]
       [--top K] [--eia PATH]

Runs in the repository's .venv (numpy, onnxruntime: `bash benches/compare.sh` installs them).
Both run FP32 on T threads (default 2: RAYON_NUM_THREADS for eia, intra_op_num_threads for
onnxruntime), inputs seeded uniform in [-1, 1).
"""
import argparse
import collections
import json
import os
import statistics as st
import subprocess
import tempfile

import numpy as np
import onnxruntime as ort

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--runs", type=int, default=10, help="inferences per round, each side")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--top", type=int, default=20, help="nodes listed, largest eia − ort first")
ap.add_argument("--eia", default="target/release/eia")
a = ap.parse_args()


def eia_round():
    """eia's profile: {node names: (ms, kind, flops)}."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "profile.json")
        cmd = [a.eia, "infer", a.model, "--runs", str(a.runs), "--batch", str(a.batch)]
        cmd += ["--profile", "--profile-json", path]
        env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
        subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        with open(path) as f:
            nodes = json.load(f)["nodes"]
    return {tuple(n["nodes"]): (n["ms"], n["kind"], n["flops"]) for n in nodes}


def ort_round():
    """onnxruntime's profile: {node name: median ms over the runs after the first}."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.enable_profiling = True
    session = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feed = {}
    for i in session.get_inputs():
        shape = [a.batch if not isinstance(d, int) or k == 0 else d for k, d in enumerate(i.shape)]
        feed[i.name] = rng.uniform(-1, 1, shape).astype(np.float32)
    for _ in range(a.runs + 1):
        session.run(None, feed)
    path = session.end_profiling()
    times = collections.defaultdict(list)
    with open(path) as f:
        for event in json.load(f):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                times[event["name"][: -len("_kernel_time")]].append(event["dur"] / 1e3)
    os.unlink(path)
    return {name: st.median(t[1:] or t) for name, t in times.items()}


def ort_time(names, profile):
    """onnxruntime's time for the ONNX nodes `names` (None if it ran none of them)."""
    hits = [ms for node, ms in profile.items() if node.removesuffix("_nchwc") in names]
    return sum(hits) if hits else None


eia, peer = [], []
for r in range(a.rounds):
    eia.append(eia_round())
    peer.append(ort_round())
    print(f"round {r + 1}/{a.rounds}: eia {sum(v[0] for v in eia[-1].values()):.2f} ms, "
          f"onnxruntime {sum(peer[-1].values()):.2f} ms (node sums)", flush=True)

rows = []  # (eia − ort ms, first name, kind, eia ms, ort ms or None, ratio or None, flops)
for names, (_, kind, flops) in eia[0].items():
    e = [p[names][0] for p in eia]
    o = [ort_time(set(names), p) for p in peer]
    if None in o:
        rows.append((0.0, names[0], kind, st.median(e), None, None, flops))
        continue
    ratio = st.median(y / x for x, y in zip(e, o))
    e, o = st.median(e), st.median(o)
    rows.append((e - o, names[0], kind, e, o, ratio, flops))

matched = sum(r[4] for r in rows if r[4] is not None)
print(f"\n{a.model}, batch {a.batch}, {a.threads} threads, {a.rounds} rounds of {a.runs}: "
      f"eia {sum(r[3] for r in rows):.2f} ms, onnxruntime {matched:.2f} ms on the same nodes, "
      f"{st.median(sum(p.values()) for p in peer):.2f} ms in all (node sums, medians)")
kinds = collections.defaultdict(lambda: [0.0, 0.0])
for r in rows:
    if r[4] is not None:
        kinds[r[2]][0] += r[3]
        kinds[r[2]][1] += r[4]
for kind, (e, o) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
    print(f"  {kind:24s} eia {e:8.2f} ms  onnxruntime {o:8.2f} ms")
print(f"\n{'node':24s} {'kind':20s} {'eia ms':>8s} {'ort ms':>8s} {'ort/eia':>8s} {'MFLOP':>8s} "
      f"{'eia GFLOPS':>10s} {'ort GFLOPS':>10s}")
for diff, name, kind, e, o, ratio, flops in sorted(rows, key=lambda r: -r[0])[: a.top]:
    if o is None:
        print(f"{name:24s} {kind:20s} {e:8.3f} {'-':>8s}")
        continue
    print(f"{name:24s} {kind:20s} {e:8.3f} {o:8.3f} {ratio:8.2f} {flops / 1e6:8.1f} "
          f"{flops / e / 1e6:10.0f} {flops / o / 1e6:10.0f}")
