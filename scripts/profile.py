#!/usr/bin/env python3
"""Where a model's time goes: eia's per-op profile beside onnxruntime's, in the same run.

Runs `eia infer MODEL --profile --profile-json` (each op's median time over --runs op-by-op
inferences) and then onnxruntime (CPUExecutionProvider, every core, its default graph
optimizations) on the same file and batch with `SessionOptions.enable_profiling`, whose JSON
gives each node's kernel time; per node the median over the same number of runs. Prints:

- both totals (eia's ops summed, and its whole-program p50; onnxruntime's kernels summed, and
  its wall-clock p50 without profiling);
- time per op kind, eia's kinds (`Conv+Relu`, `Conv(depthwise)`, …) and onnxruntime's (after
  its fusions: `FusedConv`, NCHWc `Conv`, `ReorderInput`, …) side by side;
- the nodes both runtimes name alike (onnxruntime keeps the first node's name when it fuses),
  the largest eia − onnxruntime differences first: 15 of them, `--top N` for N (0: all).

onnxruntime runs in FP32 whatever `--fp16` says (its CPU provider casts FP16 models to FP32
around most ops), as in `scripts/models.py --bench`.

On a machine whose speed drifts from one minute to the next, `--rounds R` runs eia and then
onnxruntime R times in turn: every time is then the median over the rounds, and each matched
node's ort/eia the median of its per-round ratios. `--threads T` gives both T threads (eia's
RAYON_NUM_THREADS, onnxruntime's intra_op_num_threads; default every core).

Usage: scripts/profile.py --eia target/release/eia MODEL.onnx [--batch N] [--fp16] [--runs N]
       [--rounds R] [--threads T] [--top N]
(`eia zoo resnet50 -o r50.onnx` writes a model.)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import onnxruntime as ort


def run_eia(eia, model, x, batch, fp16, runs, threads, tmp):
    xin, prof = os.path.join(tmp, "x.npy"), os.path.join(tmp, "eia.json")
    np.save(xin, x)
    cmd = [eia, "infer", model, "--input", xin, "--batch", str(batch), "--runs", str(runs),
           "--profile", "--profile-json", prof] + (["--fp16"] if fp16 else [])
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    if r.returncode != 0:
        sys.exit(f"eia infer failed: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    with open(prof) as f:
        return json.load(f)


def run_ort(model, x, runs, threads, tmp):
    """onnxruntime's wall-clock p50, and each node's (kind, median kernel ms) by name."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    plain = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = {plain.get_inputs()[0].name: x}
    plain.run(None, feed)
    walls = []
    for _ in range(runs):
        t = time.perf_counter()
        plain.run(None, feed)
        walls.append((time.perf_counter() - t) * 1e3)
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tmp, "ort")
    s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        s.run(None, feed)
    with open(s.end_profiling()) as f:
        events = json.load(f)
    per_run = defaultdict(list)  # node -> kernel ms of each run
    kinds = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"][: -len("_kernel_time")]
            per_run[node].append(e["dur"] / 1e3)
            kinds[node] = e["args"].get("op_name", "?")
    # The first run is a warm-up.
    nodes = {n: (kinds[n], float(np.median(t[1:] if len(t) > 1 else t)))
             for n, t in per_run.items()}
    return float(np.median(walls)), nodes


def by_kind(pairs):
    out = defaultdict(lambda: [0, 0.0])
    for kind, ms in pairs:
        out[kind][0] += 1
        out[kind][1] += ms
    return sorted(out.items(), key=lambda kv: -kv[1][1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eia", required=True)
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--top", type=int, default=15,
                    help="how many nodes to list, largest gap first (0: all)")
    a = ap.parse_args()
    if a.rounds < 1 or a.threads < 1:
        ap.error("--rounds and --threads take a whole number ≥ 1")
    if a.top < 0:
        ap.error("--top takes a whole number ≥ 0 (0: every node)")
    shape = [a.batch] + [d if isinstance(d, int) else 1 for d in
                         ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
                         .get_inputs()[0].shape[1:]]
    x = np.random.default_rng(a.seed).uniform(-1, 1, shape).astype(np.float32)
    eia_rounds, ort_rounds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.rounds):
            eia_rounds.append(run_eia(a.eia, a.model, x, a.batch, a.fp16, a.runs, a.threads, tmp))
            ort_rounds.append(run_ort(a.model, x, a.runs, a.threads, tmp))
    # Medians over the rounds (eia lists its ops in the same order every round).
    median = lambda values: float(np.median(list(values)))  # noqa: E731
    e = dict(eia_rounds[0], p50_ms=median(r["p50_ms"] for r in eia_rounds),
             nodes=[dict(n, ms=median(r["nodes"][i]["ms"] for r in eia_rounds))
                    for i, n in enumerate(eia_rounds[0]["nodes"])])
    ort_p50 = median(p50 for p50, _ in ort_rounds)
    o = {name: (kind, median(nodes[name][1] for _, nodes in ort_rounds))
         for name, (kind, _) in ort_rounds[0][1].items()}
    e_sum = sum(n["ms"] for n in e["nodes"])
    o_sum = sum(ms for _, ms in o.values())
    load = os.getloadavg()
    print(f"{os.path.basename(a.model)} batch {a.batch}, eia {'FP16' if a.fp16 else 'FP32'}, "
          f"onnxruntime {ort.__version__} FP32, {a.threads} threads, medians of {a.runs} runs "
          f"({a.rounds} round{'s' if a.rounds > 1 else ''}), "
          f"load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"  eia:         ops sum {e_sum:9.2f} ms, whole program p50 {e['p50_ms']:9.2f} ms, "
          f"{len(e['nodes'])} ops")
    print(f"  onnxruntime: kernels sum {o_sum:5.2f} ms, whole run p50 {ort_p50:13.2f} ms, "
          f"{len(o)} nodes")
    print(f"  ort/eia (whole): {ort_p50 / e['p50_ms']:.2f}x")
    ek = by_kind((n["kind"], n["ms"]) for n in e["nodes"])
    ok = by_kind(o.values())
    print(f"\n  {'eia op':<24}{'count':>6}{'ms':>10}{'%':>6}   "
          f"{'onnxruntime op':<24}{'count':>6}{'ms':>10}{'%':>6}")
    for i in range(max(len(ek), len(ok))):
        left = (f"{ek[i][0]:<24}{ek[i][1][0]:>6}{ek[i][1][1]:>10.2f}"
                f"{100 * ek[i][1][1] / e_sum:>5.1f}%") if i < len(ek) else " " * 46
        right = (f"{ok[i][0]:<24}{ok[i][1][0]:>6}{ok[i][1][1]:>10.2f}"
                 f"{100 * ok[i][1][1] / o_sum:>5.1f}%") if i < len(ok) else ""
        print(f"  {left}   {right}")
    # onnxruntime names a fused node after its group's last node (`relu_9`, `relu_9_nchwc`);
    # eia lists every node of its fused groups.
    # onnxruntime's name for each ONNX node name (its NCHWc rewrite appends `_nchwc`).
    ort_name = {name.removesuffix("_nchwc"): name for name in o}
    matched = []
    for i, n in enumerate(e["nodes"]):
        name = next((ort_name[m] for m in reversed(n["nodes"]) if m in ort_name), None)
        if name:
            # ort/eia: the median of the rounds' ratios.
            ratio = median(nodes[name][1] / r["nodes"][i]["ms"]
                           for r, (_, nodes) in zip(eia_rounds, ort_rounds))
            matched.append((n, o[name], ratio))
    matched.sort(key=lambda m: -(m[0]["ms"] - m[1][1]))
    print(f"\n  {len(matched)} of {len(e['nodes'])} eia ops match an onnxruntime node by name; "
          "largest eia − onnxruntime first:")
    print(f"  {'eia op':<20}{'eia ms':>9}{'GFLOPS':>8}   {'ort op':<14}{'ort ms':>9}{'GFLOPS':>8}"
          f"{'ort/eia':>9}   nodes")
    for n, (kind, ms), ratio in matched[:a.top or len(matched)]:
        gf = n["flops"] / 1e6
        print(f"  {n['kind']:<20}{n['ms']:>9.3f}{gf / max(n['ms'], 1e-9):>8.1f}   "
              f"{kind:<14}{ms:>9.3f}{gf / max(ms, 1e-9):>8.1f}{ratio:>9.2f}   "
              f"{'+'.join(n['nodes'])}")

if __name__ == "__main__":
    main()
