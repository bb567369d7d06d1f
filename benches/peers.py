#!/usr/bin/env python3
"""Peer benchmarks for `eia`: time the same workloads on onnxruntime (CPU) and numpy.

Reads the workload descriptions printed by `eia workloads --json` (one JSON
object per line, from a file argument or stdin), builds for each one an ONNX
model in memory whose only node is the op itself (opset 17), runs it with
onnxruntime's CPUExecutionProvider and prints one JSON object per line:

  {"id": ..., "dtype": "FP32"|"FP16", "peer": "onnxruntime"|"numpy",
   "median_s": ..., "runs": ..., "threads": ..., "graph": "Cast>Gemm>Cast"}

"graph" lists the op types onnxruntime actually runs after its graph
optimisations; "fallback": true is added when it inserted Cast nodes, i.e. it
has no kernel for the op in that dtype and computes it in fp32 between casts.
When a session cannot be built or run, {"id", "dtype", "peer", "error"} is
printed instead.

Model layout: Gemm takes A[m,k] and B[k,n] as graph inputs (plain Y = A.B, as
numpy and eia see them); Conv takes X as input and W, bias as initializers;
BatchNormalization takes X as input and scale, B, mean, var as initializers;
Softmax (axis=-1), the unary activations, the pools (MaxPool, GlobalAveragePool, ...) and
LRN take X as input; the binary ops (Add, Sub, Mul, Div) take A and B as inputs, Add with "relu"
followed by a Relu node (eia fuses it). Inputs are deterministic uniform random
values (seeded from the workload id); BN variance lies in [0.5, 1.5].

For gemm workloads numpy `a @ b` (its bundled OpenBLAS) is timed as a second
peer, in FP32 only (numpy's fp16 matmul is not a BLAS kernel, not a fair peer).

`peers.py --join EIA.jsonl PEERS.jsonl` instead prints the comparison table
(used by benches/compare.sh): eia's throughput, each peer's, and eia/peer (with
several rounds of records per workload, in round order: medians, and the median
of the per-round ratios); for
a memory-bound workload also the GB/s of the plain copy of the same bytes that
`eia run` timed right after it, and eia's GB/s as a percentage of it.

Usage:
  eia workloads --json | python3 benches/peers.py [--dtype fp32] [--dtype fp16]
      [--filter TEXT] [--seconds 0.3] [--threads N]
  python3 benches/peers.py --join eia.jsonl peers.jsonl
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import zlib

MEMORY_BOUND = {"batchnorm", "softmax", "unary", "binary", "pool", "transpose", "concat", "lrn"}  # reported in GB/s; gemm and conv in GFLOPS


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workloads", nargs="?", help="file of `eia workloads --json` lines (default: stdin)")
    p.add_argument("--dtype", action="append", choices=["fp32", "fp16"],
                   help="element type (repeatable; default both)")
    p.add_argument("--filter", default="", help="only workloads whose id contains TEXT")
    p.add_argument("--seconds", type=float, default=0.3, help="timing budget per workload and peer")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (default: cores)")
    p.add_argument("--join", nargs=2, metavar=("EIA_JSONL", "PEERS_JSONL"),
                   help="print the comparison table of two result files and exit")
    return p.parse_args()


def read_jsonl(lines):
    return [json.loads(line) for line in lines if line.strip()]


# ----------------------------------------------------------------------------
# Timing

def time_it(fn, seconds):
    """Warm up once, then time fn() for about `seconds` (at least 3 runs); return (median, runs)."""
    fn()
    times = []
    deadline = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


# ----------------------------------------------------------------------------
# Model construction

def build(w, np_dtype, onnx_dtype, rng):
    """Return (onnx model, feeds dict) for one workload."""
    from onnx import helper, numpy_helper

    def rand(shape, lo=-1.0, hi=1.0):
        return rng.uniform(lo, hi, size=shape).astype(np.float32).astype(np_dtype)

    family = w["family"]
    inputs, inits, attrs = {}, {}, {}
    extra = []  # nodes after the op (a Relu after Add)
    if family == "gemm":
        op = "Gemm"
        inputs = {"A": rand((w["m"], w["k"])), "B": rand((w["k"], w["n"]))}
    elif family == "conv":
        op = "Conv"
        inputs = {"X": rand(w["x"])}
        inits = {"W": rand(w["w"]), "Bias": rand((w["w"][0],))}
        attrs = dict(kernel_shape=w["w"][2:], strides=w["strides"], pads=w["pads"],
                     dilations=w["dilations"], group=w["group"])
    elif family == "batchnorm":
        op = "BatchNormalization"
        c = w["shape"][1]
        inputs = {"X": rand(w["shape"])}
        inits = {"scale": rand((c,), 0.5, 1.5), "B": rand((c,)),
                 "mean": rand((c,), -0.5, 0.5), "var": rand((c,), 0.5, 1.5)}
        attrs = dict(epsilon=1e-5)
    elif family == "softmax":
        op = "Softmax"
        inputs = {"X": rand(w["shape"])}
        attrs = dict(axis=-1)
    elif family == "unary":
        # Relu, Clip, LeakyRelu, Sigmoid, Tanh; Clip's bounds are constant inputs in ONNX.
        op = w["op"]
        inputs = {"X": rand(w["shape"], -8.0, 8.0)}
        if op == "Clip":
            # Both inputs, in order; an unset bound is the matching infinity.
            for bound, unset in (("min", -np.inf), ("max", np.inf)):
                inits[bound] = np.array(w.get(bound, unset), dtype=np.float32).astype(np_dtype)
        if op == "LeakyRelu":
            attrs = dict(alpha=w["alpha"])
    elif family == "binary":
        op = w["op"]
        b = rand(w["b"], 0.5, 1.5) if op == "Div" else rand(w["b"])
        inputs = {"A": rand(w["a"]), "B": b}
        if w.get("relu"):
            extra = [helper.make_node("Relu", ["S"], ["Y"])]
    elif family == "pool":
        op = w["op"]
        inputs = {"X": rand(w["shape"])}
        attrs = {k: w[k] for k in ("kernel_shape", "strides", "pads") if k in w}
    elif family == "transpose":
        op = "Transpose"
        inputs = {"X": rand(w["shape"])}
        attrs = dict(perm=w["perm"])
    elif family == "concat":
        op = "Concat"
        inputs = {f"X{i}": rand(w["shape"]) for i in range(w["inputs"])}
        attrs = dict(axis=1)
    elif family == "lrn":
        op = "LRN"
        inputs = {"X": rand(w["shape"])}
        attrs = dict(size=w["size"], **{k: float(w[k]) for k in ("alpha", "beta", "bias")})
    else:
        raise ValueError(f"unknown family {family!r}")

    node = helper.make_node(op, list(inputs) + list(inits), ["S" if extra else "Y"], **attrs)
    graph = helper.make_graph(
        [node] + extra, w["id"].replace("/", "_"),
        [helper.make_tensor_value_info(n, onnx_dtype, a.shape) for n, a in inputs.items()],
        [helper.make_tensor_value_info("Y", onnx_dtype, None)],
        [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by any onnxruntime that supports opset 17
    return model, inputs


def ort_session(model, threads, optimized_path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only (hides the "serializing optimized model" warning)
    so.optimized_model_filepath = optimized_path  # to see what actually runs (casts, NCHWc)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_peers(args):
    threads = args.threads
    dtypes = args.dtype or ["fp32", "fp16"]
    text = open(args.workloads).read() if args.workloads else sys.stdin.read()
    workloads = [w for w in read_jsonl(text.splitlines()) if args.filter in w["id"]]
    types = {"fp32": (np.float32, onnx.TensorProto.FLOAT), "fp16": (np.float16, onnx.TensorProto.FLOAT16)}

    tmpdir = tempfile.mkdtemp(prefix="eia-peers-")
    optimized = os.path.join(tmpdir, "optimized.onnx")
    for w in workloads:
        for dt in dtypes:
            np_dtype, onnx_dtype = types[dt]
            rng = np.random.default_rng(zlib.crc32(w["id"].encode()))
            base = {"id": w["id"], "dtype": dt.upper()}
            model, feeds = build(w, np_dtype, onnx_dtype, rng)

            try:
                sess = ort_session(model, threads, optimized)
                ops = [n.op_type for n in onnx.load(optimized).graph.node]
                median, runs = time_it(lambda: sess.run(None, feeds), args.seconds)
                rec = dict(base, peer="onnxruntime", median_s=median, runs=runs, threads=threads,
                           graph=">".join(ops))
                if "Cast" in ops:
                    rec["fallback"] = True
                del sess
            except Exception as e:  # no kernel for this dtype, bad shape, ...
                rec = dict(base, peer="onnxruntime", error=" ".join(str(e).split())[:300])
            print(json.dumps(rec), flush=True)

            if w["family"] == "gemm" and dt == "fp32":
                a, b = feeds["A"], feeds["B"]
                median, runs = time_it(lambda: a @ b, args.seconds)
                print(json.dumps(dict(base, peer="numpy", median_s=median, runs=runs, threads=threads)),
                      flush=True)
    if os.path.exists(optimized):
        os.remove(optimized)
    os.rmdir(tmpdir)


# ----------------------------------------------------------------------------
# Join: the comparison table

def join(eia_path, peers_path):
    # Several rounds give several records per workload (in round order): medians over them, and
    # eia/peer as the median of the per-round ratios.
    rounds = {}  # (id, dtype) -> eia records
    for e in read_jsonl(open(eia_path)):
        rounds.setdefault((e["id"], e["dtype"]), []).append(e)
    peer_rounds = {}  # (id, dtype, peer) -> peer records
    for r in read_jsonl(open(peers_path)):
        peer_rounds.setdefault((r["id"], r["dtype"], r["peer"]), []).append(r)
    median = statistics.median
    eia = []
    for records in rounds.values():
        times = [r["median_s"] for r in records]
        e = dict(records[0], median_s=median(times), times=times)
        if "copy_median_s" in e:
            e["copy_median_s"] = median(r["copy_median_s"] for r in records)
        eia.append(e)
    peers = {}
    for key, records in peer_rounds.items():
        errors = [r for r in records if "error" in r]
        times = [r["median_s"] for r in records]
        peers[key] = errors[0] if errors else dict(records[0], median_s=median(times), times=times)
    names = {"onnxruntime": "ort", "numpy": "numpy"}  # peer -> column label

    def rate(e, median):
        work = e["bytes"] if e["family"] in MEMORY_BOUND else e["flops"]
        return work / median / 1e9

    def peer_columns(label):
        return f" {label:>9} {'eia/' + label:>9}"

    head = f"{'workload':<28} {'dtype':<5} {'unit':<6} {'eia':>8}"
    head += peer_columns("ort") + f" {'copy':>8} {'eia/copy':>8}" + peer_columns("numpy")
    print(head)
    print("-" * len(head))
    notes, fallbacks = [], {}  # errors; onnxruntime's fallback graph -> workload ids
    for e in eia:
        unit = "GB/s" if e["family"] in MEMORY_BOUND else "GFLOPS"
        line = f"{e['id']:<28} {e['dtype']:<5} {unit:<6} {rate(e, e['median_s']):>8.2f}"
        for n in names:
            if n == "numpy":  # the copy's columns go beside onnxruntime's
                if "copy_median_s" in e:
                    copy = e["copy_bytes"] / e["copy_median_s"] / 1e9
                    line += f" {copy:>8.2f} {100 * rate(e, e['median_s']) / copy:>7.0f}%"
                else:
                    line += f" {'-':>8} {'-':>8}"
            p = peers.get((e["id"], e["dtype"], n))
            if p is None:
                line += f" {'-':>9} {'-':>9}"
            elif "error" in p:
                line += f" {'error':>9} {'-':>9}"
                notes.append(f"{e['id']} {e['dtype']} {n}: {p['error']}")
            else:
                mark = "*" if p.get("fallback") else ""
                ratio = median(pt / et for pt, et in zip(p["times"], e["times"]))
                line += f" {rate(e, p['median_s']):>8.2f}{mark or ' '} {ratio:>8.2f}x"
                if mark:
                    fallbacks.setdefault(f"{e['family']} {e['dtype']}: {p['graph']}", []).append(e["id"])
        print(line)
    print()
    n = max(len(r) for r in rounds.values()) if rounds else 0
    print(f"Throughput = eia's flops (GFLOPS) or bytes (GB/s) for the workload / median time "
          f"(over {n} round{'s' if n != 1 else ''}: each workload on eia and its peers back to "
          "back); eia/peer = peer time / eia time, the median of the rounds' ratios (>1: eia faster); "
          "copy = GB/s of a plain copy of the same bytes in eia's run (eia/copy: eia's GB/s as a "
          "percentage of it).")
    if fallbacks:
        print("* onnxruntime inserted Cast nodes (no CPU kernel for the op in this dtype: it ran in fp32):")
        for graph, ids in fallbacks.items():
            print(f"  {graph}  ({len(ids)} workload{'s' if len(ids) > 1 else ''})")
    if notes:
        print("Errors:")
        for n in notes:
            print("  " + n)


if __name__ == "__main__":
    args = parse_args()
    if args.join:
        join(*args.join)
        sys.exit(0)
    # numpy's OpenBLAS reads its thread count at import time.
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import onnx
    import onnxruntime as ort
    run_peers(args)
