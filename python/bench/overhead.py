"""Python's cost per op: a tiny GEMM ([4, 4] x [4, 4], FP32) on a local accelerator, called
from Python (`acc.gemm(a, b)`) and the same op on the same tensors called from Rust with no
Python in the loop (`rust_seconds_per_op`); prints both and the difference.

    .venv/bin/python python/bench/overhead.py [--calls N] [--backend cpu]
"""

import argparse
import time

import numpy as np

import eia


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backend", default="cpu")
    args = parser.parse_args()
    with eia.Device(backend=args.backend, overcommit=True).attach("eia2.medium") as acc:
        a = acc.upload(np.random.rand(4, 4).astype(np.float32))
        b = acc.upload(np.random.rand(4, 4).astype(np.float32))
        gemm, native = acc.gemm, acc._native
        py_best = rust_best = float("inf")
        for _ in range(args.rounds):  # best of rounds: the machine's noise only adds time
            start = time.perf_counter()
            for _ in range(args.calls):
                gemm(a, b)
            py_best = min(py_best, (time.perf_counter() - start) / args.calls)
            rust_best = min(rust_best, native.rust_seconds_per_op("gemm", (a, b), args.calls))
        print(f"tiny GEMM [4,4]x[4,4] FP32 on {acc.backend}: best of {args.rounds} x "
              f"{args.calls} calls")
        print(f"  from Rust:   {rust_best * 1e6:7.2f} us/op")
        print(f"  from Python: {py_best * 1e6:7.2f} us/op")
        print(f"  Python overhead: {(py_best - rust_best) * 1e6:.2f} us/op")


if __name__ == "__main__":
    main()
