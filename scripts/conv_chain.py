#!/usr/bin/env python3
"""Convolutions as they run inside a model, eia beside onnxruntime: a chain of L same-shape
convolutions (each followed by ReLU, each with its own weights), so every convolution reads the
previous one's output, as in ResNet-50, instead of one convolution on a fresh input.

Kinds:
- `3x3`: L convolutions C → C, 3×3, pad 1, on H×H maps (ResNet-50's stage convolutions);
- `1x1`: L/2 pairs C → C/4 → C, 1×1 (the ends of ResNet-50's bottlenecks).

Writes the model into a temporary directory, then alternates `eia infer MODEL --runs N` and
onnxruntime (CPUExecutionProvider, `--threads` intra-op threads; eia with RAYON_NUM_THREADS)
for `--rounds` rounds, and prints each one's min and median p50 and the FLOP rate of the min.

Usage: scripts/conv_chain.py --eia target/release/eia {3x3,1x1} C H [--layers L]
       [--threads T] [--rounds R] [--runs N]
Example (ResNet-50's 56×56 3×3 stage): scripts/conv_chain.py --eia target/release/eia 3x3 64 56
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

from models import Graph, ort_p50_ms, p50_ms


def chain(kind, c, h, layers):
    """The chain model and its FLOPs per inference."""
    shapes = [(c, c, 3)] * layers if kind == "3x3" else [(c, c // 4, 1), (c // 4, c, 1)] * (layers // 2)
    g, y, flops = Graph(), "x", 0
    for ci, co, r in shapes:
        y = g.conv(y, ci, co, r, pad=r // 2)
        flops += 2 * co * ci * r * r * h * h
    return g.model([c, h, h], y, f"{kind}_chain"), flops


def eia_p50(eia, path, runs, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([eia, "infer", path, "--runs", str(runs)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return p50_ms(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eia", required=True)
    ap.add_argument("kind", choices=["3x3", "1x1"])
    ap.add_argument("c", type=int)
    ap.add_argument("h", type=int)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args()
    if a.kind == "1x1" and (a.c % 4 or a.layers % 2):
        sys.exit("conv_chain.py: 1x1 chains need C a multiple of 4 and an even --layers")
    model, flops = chain(a.kind, a.c, a.h, a.layers)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "chain.onnx")
        onnx.save(model, path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).uniform(-1, 1, (1, a.c, a.h, a.h)).astype(np.float32)
        eia, peer = [], []
        for _ in range(a.rounds):
            eia.append(eia_p50(a.eia, path, a.runs, a.threads))
            peer.append(ort_p50_ms(session, {"x": x}, a.runs))
    print(f"{a.kind} chain, {a.layers} convolutions, C={a.c}, {a.h}x{a.h}, "
          f"{flops / 1e9:.3f} GFLOP, {a.threads} thread(s), {a.rounds} alternated rounds of p50:")
    for name, ms in (("eia", eia), ("onnxruntime", peer)):
        print(f"  {name:12s} min {min(ms):7.2f} ms  median {statistics.median(ms):7.2f} ms  "
              f"{flops / min(ms) / 1e6:6.1f} GFLOPS at the min")
    print(f"  eia/onnxruntime (min): {min(peer) / min(eia):.2f}x")


if __name__ == "__main__":
    main()
