#!/usr/bin/env python3
"""The CUDA benches' framework peers, run on the GPU machine in the same session as
`cargo bench --bench cuda` (scripts/device): cuDNN convolution through PyTorch on the ResNet-50
layer shapes of eia's workloads (batch 1 and 32, FP32 and FP16, NCHW, bias, cudnn.benchmark on),
plus torch.matmul (cuBLAS), softmax and batch norm on the same shapes as a cross-check. TF32 is
off, as in eia. Prints one table; timings are CUDA-event medians of 15 samples of a batch of
calls (at least ~5 ms each)."""
import json, sys
import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True
dev = torch.device("cuda")


def median_seconds(fn):
    fn(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); fn(); e.record(); e.synchronize()
    reps = max(1, min(10000, int(5.0 / max(s.elapsed_time(e), 1e-4))))
    times = []
    for _ in range(15):
        s.record()
        for _ in range(reps):
            fn()
        e.record(); e.synchronize()
        times.append(s.elapsed_time(e) / 1e3 / reps)
    return sorted(times)[len(times) // 2]


def convs(n):
    # (name, c, hw, k, rs, stride, pad, group) — the layers of eia::workload::Workload::resnet50_convs
    return [("conv1_7x7s2", 3, 224, 64, 7, 2, 3, 1), ("res2_1x1", 64, 56, 64, 1, 1, 0, 1),
            ("res2_3x3", 64, 56, 64, 3, 1, 1, 1), ("res2_1x1_expand", 64, 56, 256, 1, 1, 0, 1),
            ("res3_3x3", 128, 28, 128, 3, 1, 1, 1), ("res4_3x3", 256, 14, 256, 3, 1, 1, 1),
            ("res4_3x3s2", 256, 28, 256, 3, 2, 1, 1),
            ("res4_1x1_reduce", 1024, 14, 256, 1, 1, 0, 1), ("res5_3x3", 512, 7, 512, 3, 1, 1, 1),
            ("mobilenet_stem_3x3s2", 3, 224, 32, 3, 2, 1, 1), ("mobilenet_1x1_expand", 16, 112, 96, 1, 1, 0, 1),
            ("mobilenet_1x1_project", 144, 56, 24, 1, 1, 0, 1),
            ("mobilenet_dw_3x3", 128, 56, 128, 3, 1, 1, 128),
            ("mobilenet_dw_3x3s2", 144, 56, 144, 3, 2, 1, 144)]


rows = []
for dtype, name in [(torch.float32, "FP32"), (torch.float16, "FP16")]:
    for n in (1, 32):
        for (layer, c, hw, k, rs, stride, pad, group) in convs(n):
            x = torch.randn(n, c, hw, hw, device=dev, dtype=dtype)
            w = torch.randn(k, c // group, rs, rs, device=dev, dtype=dtype)
            b = torch.randn(k, device=dev, dtype=dtype)
            t = median_seconds(lambda: F.conv2d(x, w, b, stride, pad, 1, group))
            p = (hw + 2 * pad - rs) // stride + 1
            flops = 2 * n * k * p * p * (c // group) * rs * rs
            rows.append((f"conv/{layer}/n{n}", name, flops / t / 1e12, "TFLOPS", "cuDNN (torch)"))
    for s in (1024, 2048, 4096, 8192):
        a = torch.randn(s, s, device=dev, dtype=dtype)
        t = median_seconds(lambda: torch.matmul(a, a))
        rows.append((f"gemm/{s}x{s}x{s}", name, 2 * s ** 3 / t / 1e12, "TFLOPS", "cuBLAS (torch)"))
    for rows_, len_ in ((256, 1000), (64, 4096), (32, 32768), (65536, 1000), (4096, 32768)):
        x = torch.randn(rows_, len_, device=dev, dtype=dtype)
        t = median_seconds(lambda: torch.softmax(x, -1))
        rows.append((f"softmax/{rows_}x{len_}", name, 2 * x.numel() * x.element_size() / t / 1e9, "GB/s", "torch"))
    for shape in ((1, 64, 112, 112), (8, 256, 56, 56), (1, 1024, 14, 14), (32, 256, 56, 56)):
        x = torch.randn(*shape, device=dev, dtype=dtype)
        c = shape[1]
        prm = [torch.rand(c, device=dev, dtype=dtype) + 0.5 for _ in range(4)]
        t = median_seconds(lambda: F.batch_norm(x, prm[2], prm[3], prm[0], prm[1], False, 0.0, 1e-5))
        rows.append((f"batchnorm/{'x'.join(map(str, shape))}", name, 2 * x.numel() * x.element_size() / t / 1e9, "GB/s", "torch"))
    x = torch.empty(256 << 20, device=dev, dtype=torch.uint8)
    y = torch.empty_like(x)
    t = median_seconds(lambda: y.copy_(x))
    rows.append(("copy/256MiB", name, 2 * x.numel() / t / 1e9, "GB/s", "torch copy_"))

print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
print(f"{'workload':<34} {'dtype':>5} {'rate':>10}  peer")
for r in rows:
    print(f"{r[0]:<34} {r[1]:>5} {r[2]:>10.2f} {r[3]:<6} {r[4]}")
if len(sys.argv) > 1:
    json.dump([dict(zip(("id", "dtype", "rate", "unit", "peer"), r)) for r in rows], open(sys.argv[1], "w"))
