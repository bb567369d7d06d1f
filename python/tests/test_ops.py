"""Every op of eia's op table, FP32 and FP16, on a local and a remote accelerator, against
float64 references (reference.py) on fresh random inputs."""

import numpy as np
import pytest

import eia

import reference as ref

U = (-1.0, 1.0)  # the default range of inputs
POS = (0.5, 2.0)  # denominators, variances


class Case:
    def __init__(self, name, shapes, attrs=None, ranges=None, fn=None):
        self.name, self.shapes, self.attrs = name, shapes, attrs or {}
        self.ranges = ranges or [U] * len(shapes)
        self.fn = fn or getattr(ref, name)

    def __repr__(self):
        return f"{self.name}{self.shapes}{self.attrs or ''}"


POOL = dict(kernel_shape=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1))
CASES = [
    Case("gemm", [(5, 7), (7, 3), (3,)]),
    Case("gemm", [(7, 5), (3, 7), (5, 3)],
         dict(alpha=0.5, beta=2.0, trans_a=True, trans_b=True, relu=True)),
    Case("matmul", [(2, 4, 5), (5, 3)]),
    Case("matmul", [(6,), (6, 2)]),
    Case("conv", [(2, 3, 9, 9), (4, 3, 3, 3), (4,)], dict(pads=(1, 1, 1, 1), strides=(2, 2), relu=True)),
    Case("conv", [(1, 4, 8, 8), (4, 1, 3, 3)], dict(group=4, dilations=(2, 2))),
    Case("conv", [(2, 3, 9, 9), (4, 3, 3, 3), (2, 4, 5, 5), (4,)],
         dict(pads=(1, 1, 1, 1), strides=(2, 2), sum=True, relu=True)),
    Case("batch_norm", [(2, 3, 4, 5), (3,), (3,), (3,), (3,)], dict(epsilon=1e-3),
         ranges=[U, U, U, U, POS]),
    Case("softmax", [(3, 10)], dict(axis=1)),
    Case("softmax", [(2, 3, 4)]),
    Case("relu", [(4, 5)]),
    Case("clip", [(4, 5)], dict(min=-0.5, max=0.25)),
    Case("leaky_relu", [(30,)], dict(alpha=0.2)),
    Case("sigmoid", [(4, 6)]),
    Case("tanh", [(4, 6)]),
    Case("add", [(2, 3, 4), (3, 1)], dict(relu=True)),
    Case("sub", [(2, 3), (3,)]),
    Case("mul", [(4, 1), (1, 5)]),
    Case("div", [(3, 4), (4,)], ranges=[U, POS]),
    Case("sum", [(2, 3), (3,), (2, 1)], fn=ref.sum_),
    Case("max_pool", [(2, 3, 7, 7)], POOL),
    Case("average_pool", [(2, 3, 7, 7)], POOL),
    Case("average_pool", [(1, 2, 6, 5)], dict(POOL, count_include_pad=True)),
    Case("global_average_pool", [(2, 3, 5, 4)]),
    Case("global_max_pool", [(2, 3, 5, 4)]),
    Case("concat", [(2, 3), (2, 5), (2, 1)], dict(axis=1)),
    Case("transpose", [(2, 3, 4)], dict(perm=[2, 0, 1])),
    Case("transpose", [(2, 3)]),
    Case("flatten", [(2, 3, 4)], dict(axis=2)),
    Case("reshape", [(2, 3, 4)], dict(shape=[4, -1])),
    Case("squeeze", [(1, 3, 1, 4)], dict(axes=[0])),
    Case("unsqueeze", [(3, 4)], dict(axes=[0, 3])),
    Case("identity", [(3, 4)]),
    Case("dropout", [(3, 4)]),
    Case("lrn", [(2, 5, 3, 3)], dict(size=3, alpha=1e-2, beta=0.75, bias=1.0)),
]


def test_every_op_has_a_case():
    assert {c.name for c in CASES} == {e["name"] for e in eia.OPS}
    assert len(eia.OPS) == len({e["onnx"] for e in eia.OPS})


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_op(acc, case, dtype, rng):
    xs = [rng.uniform(lo, hi, size=shape).astype(dtype)
          for shape, (lo, hi) in zip(case.shapes, case.ranges)]
    y = getattr(acc, case.name)(*[acc.upload(x) for x in xs], **case.attrs)
    want, scale = case.fn(*[x.astype(np.float64) for x in xs], **case.attrs)
    assert y.shape == want.shape and y.dtype == dtype
    ref.close(y.numpy(), want, scale, dtype)


def test_close_can_fail():
    """The check itself rejects a result one part in 1e4 off in FP32."""
    want = np.linspace(1, 2, 10)
    with pytest.raises(AssertionError):
        ref.close((want * (1 + 1e-4)).astype(np.float32), want, want, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_arrays_round_trip(acc, dtype, rng):
    """Contiguous, transposed, strided and 0-d-free empty arrays upload as their values."""
    x = rng.uniform(-1, 1, size=(6, 8)).astype(dtype)
    for a in [x, x.T, x[::2, 1::3], np.asfortranarray(x), x.reshape(2, 3, 8)[:, 1]]:
        t = acc.upload(a)
        assert t.shape == a.shape and t.dtype == dtype
        back = t.numpy()
        assert back.flags.c_contiguous and np.array_equal(back, a)
    assert acc.upload(np.zeros((0, 3), dtype)).numpy().shape == (0, 3)
