"""The package around the ops: errors (one class per kind, Rust's messages), `with` cleanup,
programs (one round trip remotely), usage, resize, tiers, threads, docstrings, models."""

import concurrent.futures
import inspect
import pathlib
import time

import numpy as np
import pytest

import eia

import reference as ref
from conftest import TIER


def f32(rng, *shape):
    return rng.uniform(-1, 1, size=shape).astype(np.float32)


# --- errors -------------------------------------------------------------------------------

def test_every_error_kind_is_an_eia_error():
    kinds = [getattr(eia, n) for n in eia.__all__ if n.endswith("Error") and n != "Error"]
    assert len(kinds) == 23  # one per eia::Error variant
    for k in kinds:
        assert issubclass(k, eia.Error) and k is not eia.Error and k.__doc__


def test_shape_error(acc, rng):
    a, b = acc.upload(f32(rng, 2, 3)), acc.upload(f32(rng, 4, 5))
    with pytest.raises(eia.ShapeError, match=r"^Gemm: .*3.*4"):
        acc.gemm(a, b)


def test_dtype_mismatch_error(acc, rng):
    a = acc.upload(f32(rng, 2, 3))
    b = acc.upload(f32(rng, 2, 3).astype(np.float16))
    with pytest.raises(eia.DTypeMismatchError, match="operand B is FP16, expected FP32"):
        acc.add(a, b)


def test_arity_error(acc, rng):
    x = acc.upload(f32(rng, 2, 3))
    with pytest.raises(eia.ArityError, match="Relu: takes inputs X, got 2 inputs"):
        acc.relu(x, x)


def test_attribute_errors(acc, rng):
    x = acc.upload(f32(rng, 1, 2, 5, 5))
    w = acc.upload(f32(rng, 3, 2, 3, 3))
    with pytest.raises(eia.InvalidAttributeError, match="Conv: attribute strides"):
        acc.conv(x, w, strides=(0, 1))
    with pytest.raises(TypeError, match="unknown field `stride`"):
        acc.conv(x, w, stride=(1, 1))
    with pytest.raises(TypeError, match="relu"):
        acc.relu(x, alpha=1.0)
    with pytest.raises(TypeError, match="missing field `axis`"):
        acc.concat(x, x)


def test_unknown_dtype_and_not_an_array(acc):
    with pytest.raises(eia.UnknownDTypeError, match="unknown dtype"):
        acc.upload(np.zeros(3))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        acc.upload([1.0, 2.0])


def test_unknown_tier(device, server):
    for where in (device, server.conn):
        try:
            where.attach("eia9.huge")
        except eia.UnknownTierError as e:  # local
            assert "valid tiers are eia1.medium" in str(e)
        except eia.RemoteError as e:  # the server's refusal, with its gRPC code
            assert e.code == "NotFound" or e.code == "InvalidArgument", e.code
            assert "eia9.huge" in str(e)
        else:
            pytest.fail("attached an unknown tier")


def test_memory_quota(acc, where):
    a = acc.upload(np.ones((40000, 1), np.float32))
    b = acc.upload(np.ones((1, 40000), np.float32))
    expected = eia.MemoryQuotaError if where == "local" else eia.RemoteError
    with pytest.raises(expected, match="memory quota") as e:
        acc.matmul(a, b)  # a 6.4 GB output on a 2 GiB tier
    if where == "remote":
        assert e.value.code == "ResourceExhausted"
    assert acc.usage().memory_used < 1 << 20


def test_foreign_and_detached(device, rng):
    with device.attach(TIER) as a, device.attach(TIER) as b:
        x = a.upload(f32(rng, 2, 2))
        with pytest.raises(eia.ForeignTensorError, match="download and upload it to move it"):
            b.relu(x)
    with pytest.raises(eia.DetachedError, match="is detached"):
        a.upload(f32(rng, 2, 2))
    with pytest.raises(eia.DetachedError):
        x.numpy()


def test_network_error():
    with pytest.raises(eia.NetworkError, match="cannot connect"):
        from conftest import free_port
        eia.connect(f"http://127.0.0.1:{free_port()}")


def test_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(eia.ModelError, match="^model: "):
        eia.Model.load(bad)


def test_bad_device_backend():
    with pytest.raises(ValueError, match="auto"):
        eia.Device(backend="tpu")


# --- lifetime -------------------------------------------------------------------------------

def test_with_detaches_and_frees(device, server, rng):
    for attach in (device.attach, server.conn.attach):
        with attach(TIER) as acc:
            x = acc.upload(f32(rng, 256, 256))
            y = acc.relu(x)  # noqa: F841  (held to the end of the block)
            assert acc.usage().memory_used >= 2 * 256 * 256 * 4
        assert acc.detached and acc.usage().memory_used == 0
        with pytest.raises(RuntimeError):
            with attach(TIER) as acc:
                acc.upload(f32(rng, 256, 256))
                raise RuntimeError("the body failed")
        assert acc.detached and acc.usage().memory_used == 0


def test_dropped_tensor_is_freed(acc, rng):
    before = acc.usage().memory_used
    x = acc.upload(f32(rng, 128, 128))
    assert acc.usage().memory_used > before
    del x
    assert acc.usage().memory_used == before


def test_usage_resize_tiers(acc, rng):
    acc.gemm(acc.upload(f32(rng, 4, 8)), acc.upload(f32(rng, 8, 2)))
    u = acc.usage()
    assert (u.ops, u.flops_fp32, u.tier) == (1, 2 * 4 * 8 * 2, TIER)
    assert "flops_fp32=128" in repr(u) and "GFLOP" in str(u)
    stub = (pathlib.Path(eia.__file__).parent / "__init__.pyi").read_text()
    assert len(dir(u)) == 16
    for name in dir(u):
        assert f"    {name}: " in stub, name
    with pytest.raises(AttributeError):
        u.flops_f32
    acc.resize("eia2.large")
    assert acc.tier.name == "eia2.large" and acc.usage().tier == "eia2.large"
    names = [t.name for t in eia.tiers()]
    assert names[:3] == ["eia1.medium", "eia1.large", "eia1.xlarge"] and TIER in names
    assert "fp16_tflops" in repr(eia.tiers()[0])


# --- programs -------------------------------------------------------------------------------

def chain(ops, x, w, b):
    """Seven ops over conv output: each a method of `ops` (an accelerator or a program)."""
    y = ops.conv(x, w, b, pads=(1, 1, 1, 1), relu=True)
    y = ops.max_pool(y, kernel_shape=(2, 2), strides=(2, 2))
    y = ops.mul(y, y)
    y = ops.sigmoid(y)
    y = ops.global_average_pool(y)
    y = ops.flatten(y)
    return ops.softmax(y, axis=1)


def test_program_matches_direct_calls(acc, rng):
    x, w, b = (acc.upload(f32(rng, *s)) for s in [(2, 3, 8, 8), (4, 3, 3, 3), (4,)])
    want = chain(acc, x, w, b).numpy()
    p = acc.program()
    y = chain(p, x, w, b)
    assert len(p) == 7 and y.shape == (2, 4)
    with pytest.raises(eia.Error, match="not run yet"):
        y.numpy()
    got, = p.run([y])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(y.numpy(), want)
    with pytest.raises(eia.Error, match="already run"):
        p.run()
    with acc.program() as p2:
        z = p2.relu(y)
    np.testing.assert_array_equal(z.numpy(), np.maximum(want, 0))


def test_program_checks_each_op_when_recorded(acc, rng):
    p = acc.program()
    with pytest.raises(eia.ShapeError):
        p.matmul(acc.upload(f32(rng, 2, 3)), acc.upload(f32(rng, 2, 3)))
    assert len(p) == 0


def test_remote_program_is_one_round_trip(server, rng):
    with server.conn.attach(TIER) as acc:
        x, w, b = (acc.upload(f32(rng, *s)) for s in [(2, 3, 8, 8), (4, 3, 3, 3), (4,)])
        p = acc.program()
        y = chain(p, x, w, b)
        runs, allocs = server.rpc_count("Run"), server.rpc_count("Alloc")
        assert server.rpc_count("Upload") >= 3  # the metric is read right
        start = time.perf_counter()
        got, = p.run([y])
        took = time.perf_counter() - start
        assert server.rpc_count("Run") - runs == 1
        assert server.rpc_count("Alloc") - allocs == 0
        start = time.perf_counter()
        want = chain(acc, x, w, b).numpy()
        direct = time.perf_counter() - start
        np.testing.assert_array_equal(got, want)
        print(f"remote program of {len(p)} ops and its read: 1 Run call, 0 Alloc, "
              f"{took * 1e3:.2f} ms; the same ops called one by one, then read: "
              f"{direct * 1e3:.2f} ms")


# --- threads, docs, models ----------------------------------------------------------------------

def test_threads_share_an_accelerator(acc, rng):
    a = [f32(rng, 16, 16) for _ in range(8)]
    ts = [acc.upload(x) for x in a]

    def work(i):
        y = ts[i]
        for _ in range(20):
            y = acc.gemm(y, ts[i], alpha=0.25)
        return y.numpy()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(8)))
    for x, got in zip(a, results):
        want = x.astype(np.float64)
        for _ in range(20):
            want = 0.25 * want @ x
        assert np.allclose(got, want, rtol=1e-3, atol=1e-6)
    assert acc.usage().ops == 8 * 20


def test_help_lists_attributes():
    doc = inspect.getdoc(eia.Accelerator.conv)
    for attr in ["strides", "pads", "dilations", "group", "auto_pad", "kernel_shape", "relu"]:
        assert attr in doc
    sig = str(inspect.signature(eia.Accelerator.conv))
    assert sig.startswith("(self, X: 'Tensor', W: 'Tensor', B: 'Tensor' = None, /, *, strides=")
    assert "axis" in str(inspect.signature(eia.Program.concat))


def test_stub_lists_every_op():
    import pathlib
    stub = (pathlib.Path(eia.__file__).parent / "__init__.pyi").read_text()
    for e in eia.OPS:
        assert f"def {e['name']}(" in stub, e["name"]


def tiny_model(path, rng):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper, TensorProto
    w = rng.uniform(-1, 1, (4, 3, 3, 3)).astype(np.float32)
    g = rng.uniform(-1, 1, (4, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "g"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(g, "g")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return w, g


def test_model_runs(acc, rng, tmp_path):
    w, g = tiny_model(tmp_path / "tiny.onnx", rng)
    model = eia.Model.load(tmp_path / "tiny.onnx", batch=2)
    assert model.inputs == [("x", (2, 3, 6, 6), "FP32")] and model.flops > 0
    x = f32(rng, 2, 3, 6, 6)
    c, cs = ref.conv(x.astype(np.float64), w.astype(np.float64), pads=(1, 1, 1, 1))
    p = np.maximum(c, 0).mean(axis=(2, 3))
    want, scale = ref.gemm(p, g.astype(np.float64))
    session = model.session(acc)
    for _ in range(2):
        y, = session.run(x)
        ref.close(y, want, np.abs(cs).mean(axis=(2, 3)) @ np.abs(g) + scale, np.float32)
    y, = model.run(acc, x)
    ref.close(y, want, scale + np.abs(cs).mean(axis=(2, 3)) @ np.abs(g), np.float32)
