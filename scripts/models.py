#!/usr/bin/env python3
"""Whole models on eia against onnxruntime, on the same .onnx files and inputs.

Models: eia's own ResNet-50 and MobileNetV2 (`eia zoo`), and graphs built here with
onnx.helper from seeded random weights (He-scaled): SqueezeNet fire modules (Concat), an
Inception v1 stem and block (LRN after the stem and after the block, as GoogLeNet has them, with
an alpha large enough that the normalization changes the result; branches, MaxPool,
AveragePool, Concat), a ShuffleNet channel shuffle
(Reshape, Transpose), and the shapes real exporters emit (opset 9, 11 and 13 forms: Constant
shape chains Shape→Gather→Unsqueeze→Concat→Reshape, Dropout, Flatten, Clip with min/max
inputs, Squeeze with an axes input).

Each model runs through `eia infer` (which writes its outputs as .npy) and through onnxruntime
(CPUExecutionProvider) on the same input. FP32: max |eia − ort| ≤ 1e-4 · ‖ort‖∞ per output and the
same top-1; FP16 (`--fp16`): ≤ 1e-2 and top-1 agreement on ≥ 99% of a batch of 100 inputs. The
local CPU path, a metered tier (`--tier`) and a remote accelerator (`--remote`, against an
`eia serve` started here on loopback) all run.

`--bench` instead times whole models, eia beside onnxruntime in the same run (both on every
core of this machine): ResNet-50 at batch 1 and 8 and MobileNetV2 at batch 1, eia in FP32 and
FP16, onnxruntime in FP32 (its CPU provider casts FP16 models to FP32 around most ops);
`--rounds R` alternates them R times and reports the median ratio and its range.

`--only NAME` checks only the models whose name contains NAME (FP32, and FP16 where it is
checked), without the tier, remote and recommend checks.

Usage: scripts/models.py --eia target/release/eia [--keep DIR] [--only NAME]
       [--bench [--runs N] [--rounds R]]
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(20261202)


class Graph:
    """A graph built node by node with seeded He-scaled weights."""

    def __init__(self, opset=13):
        self.nodes, self.inits, self.n, self.opset = [], [], 0, opset

    def name(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    def init(self, array, prefix="w"):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, n_out=1, **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x, c_in, c_out, k, stride=1, pad=0, group=1, relu=True):
        a = np.sqrt(6.0 / (c_in // group * k * k))
        w = self.init(RNG.uniform(-a, a, (c_out, c_in // group, k, k)).astype(np.float32))
        b = self.init(RNG.uniform(-0.1, 0.1, c_out).astype(np.float32))
        y = self.node("Conv", [x, w, b], kernel_shape=[k, k], strides=[stride, stride],
                      pads=[pad] * 4, group=group)
        return self.node("Relu", [y]) if relu else y

    def model(self, x_shape, out, name):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"] + list(x_shape))
        y = helper.make_tensor_value_info(out, TensorProto.FLOAT, None)
        g = helper.make_graph(self.nodes, name, [x], [y], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 7

        return m


def squeezenet():
    g = Graph()
    x = g.conv("x", 3, 32, 3, stride=2)
    x = g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
    c = 32
    for squeeze, expand in [(8, 32), (8, 32), (16, 64)]:
        s = g.conv(x, c, squeeze, 1)
        e1 = g.conv(s, squeeze, expand, 1)
        e3 = g.conv(s, squeeze, expand, 3, pad=1)
        x = g.node("Concat", [e1, e3], axis=1)
        c = 2 * expand
    x = g.conv(x, c, 10, 1)
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    return g.model([3, 64, 64], x, "squeezenet")


def inception():
    g = Graph()
    x = g.conv("x", 3, 24, 3, pad=1)
    x = g.node("LRN", [x], size=5, alpha=0.5, beta=0.75, bias=1.0)
    b1 = g.conv(x, 24, 16, 1)
    b2 = g.conv(g.conv(x, 24, 8, 1), 8, 16, 3, pad=1)
    b3 = g.conv(g.conv(x, 24, 4, 1), 4, 8, 5, pad=2)
    b4 = g.conv(g.node("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4), 24, 8, 1)
    x = g.node("Concat", [b1, b2, b3, b4], axis=1)
    x = g.node("LRN", [x], size=3, alpha=0.2, beta=0.5, bias=2.0)
    x = g.node("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4,
               count_include_pad=0)
    x = g.node("GlobalMaxPool", [x])
    x = g.node("Flatten", [x])
    a = np.sqrt(6.0 / 48)
    w = g.init(RNG.uniform(-a, a, (48, 10)).astype(np.float32))
    x = g.node("MatMul", [x, w])
    x = g.node("Softmax", [x], axis=-1)
    return g.model([3, 28, 28], x, "inception")


def shufflenet():
    g = Graph()
    x = g.conv("x", 3, 24, 3, stride=2, pad=1)
    groups, c, hw = 3, 24, 16
    shape1 = g.init(np.array([-1, groups, c // groups, hw, hw], np.int64), "s")
    shape2 = g.init(np.array([-1, c, hw, hw], np.int64), "s")
    y = g.node("Reshape", [x, shape1])
    y = g.node("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = g.node("Reshape", [y, shape2])
    y = g.conv(y, c, c, 3, pad=1, group=c, relu=False)
    x = g.node("Add", [x, y])
    x = g.node("Relu", [x])
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Squeeze", [x], axes=[2, 3]) if g.opset < 13 else g.node(
        "Squeeze", [x, g.init(np.array([2, 3], np.int64), "a")])
    return g.model([3, 32, 32], x, "shufflenet")


def exporter(opset):
    """What torch.onnx.export writes for conv → bn → relu6 → dropout → view(N, -1) → linear."""
    g = Graph(opset)
    x = g.conv("x", 3, 8, 3, pad=1, relu=False)
    scale, bias = g.init(RNG.uniform(0.5, 1.5, 8).astype(np.float32)), g.init(np.zeros(8, np.float32) + 0.1)
    mean, var = g.init(RNG.uniform(-0.1, 0.1, 8).astype(np.float32)), g.init(RNG.uniform(0.8, 1.2, 8).astype(np.float32))
    bn_attrs = {"epsilon": 1e-5, "momentum": 0.9}
    if opset < 9:
        bn_attrs["spatial"] = 1
    x = g.node("BatchNormalization", [x, scale, bias, mean, var], **bn_attrs)
    if opset < 11:
        x = g.node("Clip", [x], min=0.0, max=6.0)
    else:
        lo = g.node("Constant", [], value=numpy_helper.from_array(np.array(0.0, np.float32)))
        hi = g.node("Constant", [], value=numpy_helper.from_array(np.array(6.0, np.float32)))
        x = g.node("Clip", [x, lo, hi])
    x = g.node("Dropout", [x], ratio=0.5) if opset < 12 else g.node("Dropout", [x])
    x = g.node("Identity", [x])
    shape = g.node("Shape", [x])
    zero = g.node("Constant", [], value=numpy_helper.from_array(np.array(0, np.int64)))
    n = g.node("Gather", [shape, zero], axis=0)
    n = g.node("Unsqueeze", [n], axes=[0]) if opset < 13 else g.node(
        "Unsqueeze", [n, g.init(np.array([0], np.int64), "a")])
    minus1 = g.node("Constant", [], value=numpy_helper.from_array(np.array([-1], np.int64)))
    new_shape = g.node("Concat", [n, minus1], axis=0)
    x = g.node("Reshape", [x, new_shape])
    a = np.sqrt(6.0 / (8 * 8 * 8))
    w = g.init(RNG.uniform(-a, a, (10, 8 * 8 * 8)).astype(np.float32))
    b = g.init(RNG.uniform(-0.1, 0.1, 10).astype(np.float32))
    x = g.node("Gemm", [x, w, b], transB=1)
    return g.model([3, 8, 8], x, f"exporter_opset{opset}")


def run_eia(eia, path, x, out, fp16=False, extra=(), runs=1):
    xin = out + ".in.npy"
    np.save(xin, x)
    cmd = [eia, "infer", path, "--input", xin, "--output", out, "--runs", str(runs),
           "--batch", str(x.shape[0])] + (["--fp16"] if fp16 else []) + list(extra)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"eia infer failed: {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return np.load(out).astype(np.float64), r.stdout


def run_ort(path, x):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0].astype(np.float64)


def compare(what, got, want, tol):
    assert got.shape == want.shape, f"{what}: shape {got.shape}, onnxruntime {want.shape}"
    scale = max(np.abs(want).max(), 1e-30)
    err = np.abs(got - want).max() / scale
    top = (got.reshape(got.shape[0], -1).argmax(1) == want.reshape(want.shape[0], -1).argmax(1)).mean()
    print(f"  {what:<44} max rel err {err:.2e} (≤ {tol:g}), top-1 agreement {top:.0%}")
    return err, top


def p50_ms(stdout):
    """The p50 latency `eia infer` printed."""
    for line in stdout.splitlines():
        if " inferences: p50 " in line:
            return float(line.split(" p50 ")[1].split(" ms")[0])
    sys.exit(f"no p50 in eia infer output:\n{stdout}")


def ort_p50_ms(session, feed, runs):
    """The p50 latency of `runs` onnxruntime runs of `feed`, after a warm-up run."""
    session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def bench(eia, tmp, runs, rounds):
    """Whole models, eia beside onnxruntime: each round times eia (FP32, then FP16) and
    onnxruntime back to back, in the reverse order every other round, so that a change in the
    machine's speed between minutes (seen up to 2× on shared hosts) falls on both; the ratio is
    the median of the rounds' ratios, with its range."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count()
    print(f"whole models, p50 of {runs} runs after a warm-up, {rounds} alternated round(s); "
          f"{os.cpu_count()} cores ({cpu_name()}); onnxruntime {ort.__version__}")
    print(f"{'model':<14} {'batch':>5} {'eia FP32 ms':>12} {'eia FP16 ms':>12} {'ort FP32 ms':>12} "
          f"{'FP32 eia/ort':>13}  range")
    for name, batch in [("resnet50", 1), ("resnet50", 8), ("mobilenetv2", 1)]:
        path = os.path.join(tmp, f"{name}.onnx")
        if not os.path.exists(path):
            subprocess.run([eia, "zoo", name, "-o", path], check=True, capture_output=True)
        x = RNG.uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32)
        s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: x}
        ms = {"fp32": [], "fp16": [], "ort": []}

        def on_eia():
            for fp16, key in ((False, "fp32"), (True, "fp16")):
                _, out = run_eia(eia, path, x, os.path.join(tmp, f"{name}.bench.npy"),
                                 fp16=fp16, runs=runs)
                ms[key].append(p50_ms(out))

        def on_ort():
            ms["ort"].append(ort_p50_ms(s, feed, runs))

        for r in range(rounds):
            for run in ((on_eia, on_ort) if r % 2 == 0 else (on_ort, on_eia)):
                run()
        ratios = sorted(o / e for o, e in zip(ms["ort"], ms["fp32"]))
        med = {k: statistics.median(v) for k, v in ms.items()}
        print(f"{name:<14} {batch:>5} {med['fp32']:>12.1f} {med['fp16']:>12.1f} {med['ort']:>12.1f} "
              f"{statistics.median(ratios):>12.2f}x  {ratios[0]:.2f}–{ratios[-1]:.2f}")


def cpu_name():
    """The CPU's model name, as /proc/cpuinfo gives it (numbers depend on it)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eia", required=True)
    ap.add_argument("--keep", help="write the models and outputs here")
    ap.add_argument("--bench", action="store_true", help="time whole models against onnxruntime")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --bench: alternated rounds of eia and onnxruntime (median ratio)")
    ap.add_argument("--only", help="check only the models whose name contains this")
    args = ap.parse_args()
    if args.runs < 1 or args.rounds < 1:
        ap.error("--runs and --rounds need a whole number ≥ 1")
    eia = os.path.abspath(args.eia)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        evaluate(args, eia, args.keep)
        return
    # Removed afterwards, whatever happens (the models and outputs take about 180 MB).
    with tempfile.TemporaryDirectory(prefix="eia-models-") as tmp:
        evaluate(args, eia, tmp)


def evaluate(args, eia, tmp):
    """Check (or with --bench, time) the models against onnxruntime, writing them into tmp."""
    if args.bench:
        bench(eia, tmp, args.runs, args.rounds)
        return
    failures = []

    models = {}
    for name in ["resnet50", "mobilenetv2"]:
        if args.only and args.only not in name:
            continue
        path = os.path.join(tmp, f"{name}.onnx")
        subprocess.run([eia, "zoo", name, "-o", path], check=True, capture_output=True)
        models[name] = (path, (3, 224, 224))
    for build in [squeezenet, inception, shufflenet] + [lambda o=o: exporter(o) for o in (9, 11, 13)]:
        m = build()
        if args.only and args.only not in m.graph.name:
            continue
        path = os.path.join(tmp, f"{m.graph.name}.onnx")
        onnx.save(m, path)
        dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]]
        models[m.graph.name] = (path, tuple(dims))

    def check(what, ok):
        if not ok:
            failures.append(what)

    print("FP32, batch 2: eia (CPU backend) vs onnxruntime")
    for name, (path, dims) in models.items():
        x = RNG.uniform(-1, 1, (2,) + dims).astype(np.float32)
        got, _ = run_eia(eia, path, x, os.path.join(tmp, f"{name}.fp32.npy"))
        err, top = compare(name, got, run_ort(path, x), 1e-4)
        check(f"{name} fp32", err <= 1e-4 and top == 1.0)

    print("FP16 (--fp16), batch 100: eia vs onnxruntime FP32")
    for name in ["mobilenetv2", "squeezenet", "inception", "shufflenet"]:
        if name not in models:
            continue
        path, dims = models[name]
        x = RNG.uniform(-1, 1, (100,) + dims).astype(np.float32)
        got, _ = run_eia(eia, path, x, os.path.join(tmp, f"{name}.fp16.npy"), fp16=True)
        err, top = compare(f"{name} fp16", got, run_ort(path, x), 1e-2)
        check(f"{name} fp16", err <= 1e-2 and top >= 0.99)

    if args.only:
        if failures:
            sys.exit(f"FAILED: {', '.join(failures)}")
        print(f"all {len(models)} models matching {args.only!r} match onnxruntime")
        return

    print("Metered tier and remote accelerator (ResNet-50, batch 1)")
    path, dims = models["resnet50"]
    x = RNG.uniform(-1, 1, (1,) + dims).astype(np.float32)
    want = run_ort(path, x)
    got, _ = run_eia(eia, path, x, os.path.join(tmp, "r50.tier.npy"),
                     extra=["--tier", "eia2.medium", "--overcommit"])
    err, top = compare("resnet50 metered eia2.medium", got, want, 1e-4)
    check("resnet50 metered", err <= 1e-4 and top == 1.0)
    port = free_port()
    server = subprocess.Popen([eia, "serve", "--backend", "cpu", "--listen", f"127.0.0.1:{port}",
                               "--overcommit"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("eia serve did not start")
                time.sleep(0.2)
        got, _ = run_eia(eia, path, x, os.path.join(tmp, "r50.remote.npy"),
                         extra=["--remote", f"http://127.0.0.1:{port}", "--tier", "eia1.medium"])
        err, top = compare("resnet50 remote eia1.medium", got, want, 1e-4)
        check("resnet50 remote", err <= 1e-4 and top == 1.0)
    finally:
        server.terminate()
        server.wait(timeout=60)

    print("eia recommend (SqueezeNet, a 10 s target any tier meets; 1 µs, which none does)")
    path, _ = models["squeezenet"]
    for target, want in [("10000", "recommended: eia1.medium"), ("0.001", "no tier meets")]:
        r = subprocess.run([eia, "recommend", path, "--latency-ms", target, "--runs", "1"],
                           capture_output=True, text=True, timeout=600)
        ok = r.returncode == 0 and want in r.stdout
        print(f"  --latency-ms {target}: {'ok' if ok else 'FAILED'}")
        check(f"recommend {target}", ok)

    if failures:
        sys.exit(f"FAILED: {', '.join(failures)}")
    print(f"all {len(models)} models match onnxruntime")


if __name__ == "__main__":
    main()
