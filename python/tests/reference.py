"""float64 references of every op (ONNX semantics), each returning (result, scale): `scale` is
the same computation on absolute values where terms can cancel (the error bound's size), else
the result itself. `close` is the suite's norm-wise relative error check (as tests/common)."""

import math

import numpy as np

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float16): 1e-3}


def close(got, want, scale, dtype):
    assert got.dtype == dtype, f"dtype {got.dtype}, expected {dtype}"
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    assert not np.isnan(got).any(), "NaN in the output"
    g = got.astype(np.float64)
    # A nonzero scale below the dtype's smallest normal counts as that: a subnormal output has a
    # fixed spacing there (2^-24 in FP16), not a relative one (as tests/common).
    scale = np.where(scale == 0, 0.0, np.maximum(np.abs(scale), float(np.finfo(dtype).tiny)))
    norm = np.sqrt(np.sum(scale * scale))
    diff = np.sqrt(np.sum((g - want) ** 2))
    rel = diff / norm if norm else diff
    assert rel <= TOLERANCE[np.dtype(dtype)], f"relative error {rel:.3e}"
    return rel


def same(y):
    return y, y


def gemm(a, b, c=None, alpha=1.0, beta=1.0, trans_a=False, trans_b=False, relu=False):
    a, b = (a.T if trans_a else a), (b.T if trans_b else b)
    y, s = alpha * (a @ b), abs(alpha) * (np.abs(a) @ np.abs(b))
    if c is not None:
        y, s = y + beta * c, s + abs(beta) * np.abs(c)
    return (np.maximum(y, 0) if relu else y), s


def matmul(a, b):
    return a @ b, np.abs(a) @ np.abs(b)


def _pad(x, pads, value=0.0):
    t, l, b, r = pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


def conv(x, w, *rest, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1, sum=False,
         relu=False):
    # Inputs X, W[, B], or X, W, Sum[, B] with the fused residual sum.
    z, rest = (rest[0], rest[1:]) if sum else (None, rest)
    b = rest[0] if rest else None
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    xp = _pad(x, pads)
    p = (h + pads[0] + pads[2] - dilations[0] * (r - 1) - 1) // strides[0] + 1
    q = (wd + pads[1] + pads[3] - dilations[1] * (s - 1) - 1) // strides[1] + 1
    y, sc = np.zeros((n, k, p, q)), np.zeros((n, k, p, q))
    kg = k // group
    for g in range(group):
        xg, wg = xp[:, g * cg:(g + 1) * cg], w[g * kg:(g + 1) * kg]
        for i in range(r):
            for j in range(s):
                hi, wj = i * dilations[0], j * dilations[1]
                patch = xg[:, :, hi:hi + strides[0] * (p - 1) + 1:strides[0],
                           wj:wj + strides[1] * (q - 1) + 1:strides[1]]
                y[:, g * kg:(g + 1) * kg] += np.einsum("nchw,kc->nkhw", patch, wg[:, :, i, j])
                sc[:, g * kg:(g + 1) * kg] += np.einsum(
                    "nchw,kc->nkhw", np.abs(patch), np.abs(wg[:, :, i, j]))
    if b is not None:
        y, sc = y + b[None, :, None, None], sc + np.abs(b)[None, :, None, None]
    if z is not None:
        y, sc = y + z, sc + np.abs(z)
    return (np.maximum(y, 0) if relu else y), sc


def batch_norm(x, scale, b, mean, var, epsilon=1e-5):
    e = lambda v: v[None, :, None, None]  # noqa: E731
    a = scale / np.sqrt(var + epsilon)
    y = e(a) * (x - e(mean)) + e(b)
    return y, np.abs(e(a)) * (np.abs(x) + np.abs(e(mean))) + np.abs(e(b))


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return same(e / e.sum(axis=axis, keepdims=True))


def relu(x):
    return same(np.maximum(x, 0))


def clip(x, min=None, max=None):
    return same(np.clip(x, -np.inf if min is None else min, np.inf if max is None else max))


def leaky_relu(x, alpha=0.01):
    return same(np.where(x >= 0, x, alpha * x))


def sigmoid(x):
    return same(1 / (1 + np.exp(-x)))


def tanh(x):
    return same(np.tanh(x))


def add(a, b, relu=False):
    y = a + b
    return (np.maximum(y, 0) if relu else y), np.abs(a) + np.abs(b)


def sub(a, b):
    return a - b, np.abs(a) + np.abs(b)


def mul(a, b):
    return same(a * b)


def div(a, b):
    return same(a / b)


def sum_(*xs):
    y = xs[0]
    for x in xs[1:]:
        y = y + x
    s = np.abs(xs[0])
    for x in xs[1:]:
        s = s + np.abs(x)
    return y, s


def _windows(x, kernel, strides, pads, value):
    n, c, h, w = x.shape
    xp = _pad(x, pads, value)
    p = (h + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    q = (w + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    out = np.empty((n, c, p, q, kernel[0] * kernel[1]))
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            out[..., i * kernel[1] + j] = xp[:, :, i:i + strides[0] * (p - 1) + 1:strides[0],
                                             j:j + strides[1] * (q - 1) + 1:strides[1]]
    return out


def max_pool(x, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0)):
    return same(_windows(x, kernel_shape, strides, pads, -np.inf).max(axis=-1))


def average_pool(x, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0), count_include_pad=False):
    taps = _windows(x, kernel_shape, strides, pads, 0.0).sum(axis=-1)
    if count_include_pad:
        count = kernel_shape[0] * kernel_shape[1]
    else:
        count = _windows(np.ones_like(x), kernel_shape, strides, pads, 0.0).sum(axis=-1)
    return taps / count, _windows(np.abs(x), kernel_shape, strides, pads, 0.0).sum(axis=-1) / count


def global_average_pool(x):
    axes = tuple(range(2, x.ndim))
    return x.mean(axis=axes, keepdims=True), np.abs(x).mean(axis=axes, keepdims=True)


def global_max_pool(x):
    return same(x.max(axis=tuple(range(2, x.ndim)), keepdims=True))


def concat(*xs, axis):
    return same(np.concatenate(xs, axis=axis))


def transpose(x, perm=None):
    return same(np.transpose(x, perm))


def flatten(x, axis=1):
    lead = math.prod(x.shape[:axis])
    return same(x.reshape(lead, -1))


def reshape(x, shape):
    return same(x.reshape(shape))


def squeeze(x, axes=None):
    return same(np.squeeze(x, axis=None if axes is None else tuple(axes)))


def unsqueeze(x, axes):
    return same(np.expand_dims(x, tuple(axes)))


def identity(x):
    return same(x.copy())


def dropout(x, ratio=0.5, training_mode=False):
    return same(x.copy())


def lrn(x, size, alpha=1e-4, beta=0.75, bias=1.0):
    c = x.shape[1]
    sq = np.zeros_like(x)
    lo, hi = (size - 1) // 2, math.ceil((size - 1) / 2)
    for ch in range(c):
        sq[:, ch] = (x[:, max(0, ch - lo):min(c, ch + hi + 1)] ** 2).sum(axis=1)
    return same(x / (bias + alpha / size * sq) ** beta)
