#!/usr/bin/env python3
"""eia from Python through ctypes (no compiled extension, no third-party package).

Attaches an eia2.medium accelerator on this host and, with --serve, also on an `eia serve`
started on a free loopback port; on each runs Gemm, MatMul, Conv, BatchNormalization and Softmax
in FP32 and FP16 on random inputs, checks every output against a float64 reference (relative
bounds 1e-5 for FP32, 1e-3 for FP16), checks that bad calls come back as errors, prints usage.

    cargo build --release
    python3 examples/python/eia_example.py --serve target/release/eia

Exits 0 when every check passes.
"""

import argparse
import ctypes as C
import math
import os
import random
import socket
import struct
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Values from include/eia.h.
EIA_F32, EIA_F16 = 1, 2
EIA_ERR_NULL_ARGUMENT, EIA_ERR_SHAPE, EIA_ERR_DETACHED = 1, 3, 11
BOUND = {EIA_F32: 1e-5, EIA_F16: 1e-3}
FORMAT = {EIA_F32: "f", EIA_F16: "e"}  # struct codes: binary32, binary16


class GemmAttrs(C.Structure):
    _fields_ = [("alpha", C.c_float), ("beta", C.c_float), ("trans_a", C.c_bool),
                ("trans_b", C.c_bool), ("relu", C.c_bool)]


class ConvAttrs(C.Structure):
    _fields_ = [("strides", C.c_size_t * 2), ("pads", C.c_size_t * 4),
                ("dilations", C.c_size_t * 2), ("group", C.c_size_t), ("auto_pad", C.c_uint32),
                ("kernel_shape", C.c_size_t * 2), ("relu", C.c_bool)]


class BatchNormAttrs(C.Structure):
    _fields_ = [("epsilon", C.c_float)]


class SoftmaxAttrs(C.Structure):
    _fields_ = [("axis", C.c_int64)]


class Usage(C.Structure):
    _fields_ = [("accelerator", C.c_uint64), ("attached_seconds", C.c_double),
                ("ops", C.c_uint64), ("flops_f32", C.c_uint64), ("flops_f16", C.c_uint64),
                ("charged_seconds", C.c_double), ("meter_wait_seconds", C.c_double),
                ("busy_seconds", C.c_double), ("bytes_uploaded", C.c_uint64),
                ("bytes_downloaded", C.c_uint64), ("op_bytes", C.c_uint64),
                ("memory_used", C.c_uint64), ("memory_high_water", C.c_uint64),
                ("memory_quota", C.c_uint64), ("meter_balance_seconds", C.c_double)]


class EiaError(Exception):
    def __init__(self, code, message):
        super().__init__(f"[{code}] {message}")
        self.code = code


def load(path):
    """The library with every function's signature declared."""
    lib = C.CDLL(path)
    P, S = C.c_void_p, C.c_char_p
    out = C.POINTER(C.c_void_p)
    signatures = {
        "eia_version": (S, []),
        "eia_error_code": (C.c_uint32, [P]),
        "eia_error_message": (S, [P]),
        "eia_error_free": (None, [P]),
        "eia_string_free": (None, [P]),
        "eia_device_new": (P, [S, C.c_bool, out]),
        "eia_device_attach": (P, [P, S, out]),
        "eia_device_free": (None, [P]),
        "eia_connection_new": (P, [S, S, S, out]),
        "eia_connection_attach": (P, [P, S, out]),
        "eia_connection_free": (None, [P]),
        "eia_accelerator_usage": (P, [P, C.POINTER(Usage)]),
        "eia_accelerator_summary": (P, [P, out]),
        "eia_accelerator_resize": (P, [P, S]),
        "eia_accelerator_detach": (P, [P, C.POINTER(Usage)]),
        "eia_accelerator_free": (None, [P]),
        "eia_tensor_new": (P, [P, C.c_uint32, C.POINTER(C.c_size_t), C.c_size_t, C.c_char_p,
                               C.c_size_t, out]),
        "eia_tensor_read": (P, [P, C.c_char_p, C.c_size_t]),
        "eia_tensor_free": (None, [P]),
        "eia_gemm_attrs_default": (GemmAttrs, []),
        "eia_conv_attrs_default": (ConvAttrs, []),
        "eia_gemm": (P, [P, C.POINTER(GemmAttrs), P, P, P, out]),
        "eia_matmul": (P, [P, P, P, out]),
        "eia_conv": (P, [P, C.POINTER(ConvAttrs), P, P, P, out]),
        "eia_batch_norm": (P, [P, C.POINTER(BatchNormAttrs), P, P, P, P, P, out]),
        "eia_softmax": (P, [P, C.POINTER(SoftmaxAttrs), P, out]),
    }
    for name, (restype, argtypes) in signatures.items():
        f = getattr(lib, name)
        f.restype, f.argtypes = restype, argtypes
    return lib


class Accelerator:
    """One attached accelerator and the tensors made on it (each freed by `close`)."""

    def __init__(self, lib, handle, owner_free, owner):
        self.lib, self.handle = lib, handle
        self.owner_free, self.owner = owner_free, owner
        self.tensors = []

    def check(self, err):
        if err:
            code = self.lib.eia_error_code(err)
            message = self.lib.eia_error_message(err).decode()
            self.lib.eia_error_free(err)
            raise EiaError(code, message)

    def tensor(self, dtype, shape, values):
        data = struct.pack(f"<{len(values)}{FORMAT[dtype]}", *values)
        dims = (C.c_size_t * len(shape))(*shape)
        out = C.c_void_p()
        self.check(self.lib.eia_tensor_new(self.handle, dtype, dims, len(shape), data, len(data),
                                           C.byref(out)))
        self.tensors.append(out)
        return out

    def read(self, t, dtype, n):
        size = n * struct.calcsize(FORMAT[dtype])
        buf = C.create_string_buffer(b"\xa5" * size, size)  # poisoned before the read
        self.check(self.lib.eia_tensor_read(t, buf, size))
        return list(struct.unpack(f"<{n}{FORMAT[dtype]}", buf.raw))

    def run(self, fn, *args):
        out = C.c_void_p()
        self.check(fn(self.handle, *args, C.byref(out)))
        self.tensors.append(out)
        return out

    def usage(self):
        u = Usage()
        self.check(self.lib.eia_accelerator_usage(self.handle, C.byref(u)))
        return u

    def summary(self):
        s = C.c_void_p()
        self.check(self.lib.eia_accelerator_summary(self.handle, C.byref(s)))
        text = C.cast(s, C.c_char_p).value.decode()
        self.lib.eia_string_free(s)
        return text

    def close(self):
        for t in self.tensors:
            self.lib.eia_tensor_free(t)
        self.lib.eia_accelerator_free(self.handle)
        self.owner_free(self.owner)


def rounded(dtype, values):
    """`values` as the accelerator stores them (FP16 inputs are rounded once, on upload)."""
    code = FORMAT[dtype]
    return list(struct.unpack(f"<{len(values)}{code}", struct.pack(f"<{len(values)}{code}",
                                                                    *values)))


def randoms(rng, dtype, n):
    return rounded(dtype, [rng.uniform(-1, 1) for _ in range(n)])


def compare(name, dtype, got, expected, scale):
    """Each output within the dtype's bound of its terms' magnitude."""
    worst = max(abs(g - e) / (s if s > 0 else 1) for g, e, s in zip(got, expected, scale))
    ok = worst <= BOUND[dtype]
    print(f"  {name:<10} {'FP32' if dtype == EIA_F32 else 'FP16'} {len(got):5} outputs  "
          f"max relative error {worst:.2e}  {'ok' if ok else 'FAIL'}")
    return ok


def exercise(acc, rng):
    """Every op in both dtypes against float64 references; returns whether all passed."""
    lib, ok = acc.lib, True
    for dtype in (EIA_F32, EIA_F16):
        # Gemm: Y[M,N] = alpha * A^T * B + beta * C, A stored [K,M], C broadcast [N].
        m, n, k = 5, 7, 31
        a, b, c = randoms(rng, dtype, k * m), randoms(rng, dtype, k * n), randoms(rng, dtype, n)
        attrs = lib.eia_gemm_attrs_default()
        attrs.alpha, attrs.beta, attrs.trans_a = 0.75, -1.5, True
        y = acc.run(lib.eia_gemm, C.byref(attrs), acc.tensor(dtype, [k, m], a),
                    acc.tensor(dtype, [k, n], b), acc.tensor(dtype, [n], c))
        ref, scale = [], []
        for i in range(m):
            for j in range(n):
                terms = [a[p * m + i] * b[p * n + j] for p in range(k)]
                ref.append(0.75 * sum(terms) - 1.5 * c[j])
                scale.append(0.75 * sum(map(abs, terms)) + 1.5 * abs(c[j]))
        ok &= compare("gemm", dtype, acc.read(y, dtype, m * n), ref, scale)

        # MatMul with batch broadcasting: [2,1,3,4] x [3,4,2] -> [2,3,3,2].
        x1, x2 = randoms(rng, dtype, 2 * 3 * 4), randoms(rng, dtype, 3 * 4 * 2)
        y = acc.run(lib.eia_matmul, acc.tensor(dtype, [2, 1, 3, 4], x1),
                    acc.tensor(dtype, [3, 4, 2], x2))
        ref, scale = [], []
        for bi in range(2):
            for bj in range(3):
                for i in range(3):
                    for j in range(2):
                        terms = [x1[(bi * 3 + i) * 4 + p] * x2[(bj * 4 + p) * 2 + j]
                                 for p in range(4)]
                        ref.append(sum(terms))
                        scale.append(sum(map(abs, terms)))
        ok &= compare("matmul", dtype, acc.read(y, dtype, len(ref)), ref, scale)

        # Conv: depthwise (group = C), stride 1, SAME_UPPER padding, dilation 2, no bias.
        cn, ch, h, w_, r = 2, 3, 7, 5, 3
        x = randoms(rng, dtype, cn * ch * h * w_)
        wt = randoms(rng, dtype, ch * r * r)
        cattrs = lib.eia_conv_attrs_default()
        cattrs.group, cattrs.auto_pad = ch, 1  # EIA_AUTO_PAD_SAME_UPPER
        cattrs.dilations[0] = cattrs.dilations[1] = 2
        tx = acc.tensor(dtype, [cn, ch, h, w_], x)
        y = acc.run(lib.eia_conv, C.byref(cattrs), tx, acc.tensor(dtype, [ch, 1, r, r], wt), None)
        pad = (r - 1) * 2 // 2  # total padding (r-1)*dilation, odd part at the end
        ref, scale = [], []
        for nn in range(cn):
            for kk in range(ch):
                for p in range(h):
                    for q in range(w_):
                        terms = []
                        for i in range(r):
                            for j in range(r):
                                hh, ww = p + 2 * i - pad, q + 2 * j - pad
                                if 0 <= hh < h and 0 <= ww < w_:
                                    terms.append(x[((nn * ch + kk) * h + hh) * w_ + ww]
                                                 * wt[(kk * r + i) * r + j])
                        ref.append(sum(terms))
                        scale.append(sum(map(abs, terms)))
        ok &= compare("conv", dtype, acc.read(y, dtype, len(ref)), ref, scale)

        # BatchNormalization over the conv input's channels.
        sc, bi, mean = (randoms(rng, dtype, ch) for _ in range(3))
        var = rounded(dtype, [rng.uniform(0.5, 2) for _ in range(ch)])
        params = [acc.tensor(dtype, [ch], v) for v in (sc, bi, mean, var)]
        y = acc.run(lib.eia_batch_norm, C.byref(BatchNormAttrs(1e-5)), tx, *params)
        ref, scale = [], []
        for i, v in enumerate(x):
            cc = (i // (h * w_)) % ch
            inv = 1 / math.sqrt(var[cc] + rounded(EIA_F32, [1e-5])[0])
            ref.append(sc[cc] * (v - mean[cc]) * inv + bi[cc])
            scale.append(abs(sc[cc] * (v - mean[cc]) * inv) + abs(bi[cc]))
        ok &= compare("batchnorm", dtype, acc.read(y, dtype, len(ref)), ref, scale)

        # Softmax along axis 1 (channels) of the conv input.
        y = acc.run(lib.eia_softmax, C.byref(SoftmaxAttrs(1)), tx)
        ref = [0.0] * len(x)
        for nn in range(cn):
            for s in range(h * w_):
                idx = [(nn * ch + cc) * h * w_ + s for cc in range(ch)]
                mx = max(x[i] for i in idx)
                total = sum(math.exp(x[i] - mx) for i in idx)
                for i in idx:
                    ref[i] = math.exp(x[i] - mx) / total
        ok &= compare("softmax", dtype, acc.read(y, dtype, len(ref)), ref, ref)

    # Bad calls are errors with codes and messages, never crashes.
    a = acc.tensor(EIA_F32, [2, 3], [1.0] * 6)
    for call, code in ((lambda: acc.run(lib.eia_matmul, a, a), EIA_ERR_SHAPE),
                       (lambda: acc.run(lib.eia_matmul, a, None), EIA_ERR_NULL_ARGUMENT)):
        try:
            call()
            print("  a bad call succeeded: FAIL")
            ok = False
        except EiaError as e:
            print(f"  expected error {e}")
            ok &= e.code == code
    return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(lib, url, deadline_s=30):
    """A connection to `url`, retrying while the server starts."""
    out = C.c_void_p()
    end = time.monotonic() + deadline_s
    while True:
        err = lib.eia_connection_new(url.encode(), None, None, C.byref(out))
        if not err:
            return out
        message = lib.eia_error_message(err).decode()
        lib.eia_error_free(err)
        if time.monotonic() > end:
            raise EiaError(13, message)
        time.sleep(0.1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", default=os.path.join(ROOT, "target", "release", "libeia.so"))
    parser.add_argument("--serve", metavar="EIA_BINARY",
                        help="also start `EIA_BINARY serve` on loopback and run remotely")
    parser.add_argument("--tier", default="eia2.medium")
    args = parser.parse_args()

    lib = load(args.lib)
    print(f"eia {lib.eia_version().decode()} via ctypes from {args.lib}")
    rng = random.Random(2026)
    ok = True

    device, handle = C.c_void_p(), C.c_void_p()
    probe = Accelerator(lib, None, lib.eia_device_free, None)
    # This host's CPU is slower than the tier: overcommit admits it anyway.
    probe.check(lib.eia_device_new(None, True, C.byref(device)))
    probe.check(lib.eia_device_attach(device, args.tier.encode(), C.byref(handle)))
    print(f"local {args.tier}:")
    acc = Accelerator(lib, handle, lib.eia_device_free, device)
    ok &= exercise(acc, rng)
    print("  " + acc.summary().replace("\n", "\n  "))
    acc.close()

    if args.serve:
        port = free_port()
        server = subprocess.Popen([args.serve, "serve", "--listen", f"127.0.0.1:{port}",
                                   "--overcommit"], stdout=subprocess.DEVNULL)
        try:
            conn = connect(lib, f"http://127.0.0.1:{port}")
            handle = C.c_void_p()
            probe.check(lib.eia_connection_attach(conn, args.tier.encode(), C.byref(handle)))
            print(f"remote {args.tier} on 127.0.0.1:{port}:")
            acc = Accelerator(lib, handle, lib.eia_connection_free, conn)
            ok &= exercise(acc, rng)
            u = acc.usage()
            print(f"  usage: {u.ops} ops, {u.flops_f32} FP32 + {u.flops_f16} FP16 FLOPs, "
                  f"{u.bytes_uploaded} bytes uploaded, {u.memory_used} bytes held")
            acc.close()
        finally:
            server.terminate()
            server.wait(timeout=10)

    print("all results within bounds" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
