"""eia: open, self-hosted elastic inference accelerators, from Python.

Attach a virtual accelerator of a tier on this machine (``eia.Device``) or on an ``eia serve``
server (``eia.connect``), upload numpy arrays (float32 or float16), run ONNX ops on them, read
the results back as numpy arrays::

    import numpy as np, eia
    with eia.Device(backend="cpu", overcommit=True).attach("eia2.medium") as acc:
        x = acc.upload(np.random.rand(1, 3, 32, 32).astype(np.float32))
        w = acc.upload(np.random.rand(8, 3, 3, 3).astype(np.float32))
        y = acc.softmax(acc.conv(x, w, pads=(1, 1, 1, 1), relu=True), axis=1)
        print(y.numpy().shape, acc.usage())

Every op of eia is a method of ``Accelerator`` and of ``Program`` with the op's ONNX inputs
(positional, in ONNX order) and attributes (keywords, ONNX defaults); ``help(eia.Accelerator.conv)``
lists them. Errors are ``eia.Error`` subclasses, one per kind, with eia's messages. The GIL is
released while ops run, data moves or a server is called; threads may share an accelerator.
"""

from __future__ import annotations

import inspect as _inspect
import os as _os
from typing import Any, List, Optional, Sequence, Union

from . import _eia
from ._eia import (  # noqa: F401  (re-exported)
    ArityError,
    BackendError,
    ByteLengthError,
    CapacityError,
    ConfigError,
    DataLengthError,
    DetachedError,
    DTypeMismatchError,
    Error,
    ForeignTensorError,
    InvalidAttributeError,
    MemoryQuotaError,
    Model,
    ModelError,
    NetworkError,
    NoHostError,
    OutputError,
    RemoteError,
    ResizeBelowUsageError,
    Session,
    ShapeError,
    ShapeOverflowError,
    Tensor,
    TensorLimitError,
    Tier,
    UnavailableError,
    UnknownDTypeError,
    UnknownTierError,
    Usage,
    tiers,
)

__all__ = [
    "Accelerator",
    "Connection",
    "Device",
    "Model",
    "Program",
    "Session",
    "Tensor",
    "Tier",
    "Usage",
    "connect",
    "tiers",
    "Error",
    "ArityError",
    "BackendError",
    "ByteLengthError",
    "CapacityError",
    "ConfigError",
    "DataLengthError",
    "DetachedError",
    "DTypeMismatchError",
    "ForeignTensorError",
    "InvalidAttributeError",
    "MemoryQuotaError",
    "ModelError",
    "NetworkError",
    "NoHostError",
    "OutputError",
    "RemoteError",
    "ResizeBelowUsageError",
    "ShapeError",
    "ShapeOverflowError",
    "TensorLimitError",
    "UnavailableError",
    "UnknownDTypeError",
    "UnknownTierError",
]

#: The op table (one dict per op: name, onnx, inputs, required, variadic, attrs,
#: required_attrs), from the Rust ``eia::ops::Op`` enum.
OPS: List[dict] = _eia.op_table()


class _Ops:
    """One method per op (added below from ``OPS``); ``self._native.apply`` runs or records it."""

    __slots__ = ()


class Accelerator(_Ops):
    """A virtual accelerator of a tier, local or remote. A context manager: leaving the
    ``with`` block detaches it (freeing everything it holds), also when the block raised."""

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        self._native = native

    def upload(self, array: Any) -> Tensor:
        """Copies a float32 or float16 numpy array (any strides) onto the accelerator."""
        return self._native.upload(array)

    def program(self) -> "Program":
        """A program: ops recorded, then run together by ``run()`` or at the end of a ``with``
        block — one round trip on a remote accelerator."""
        return Program(self._native.program())

    def usage(self) -> Usage:
        """Its usage so far (the final record once detached)."""
        return self._native.usage()

    def resize(self, tier: str) -> None:
        """Moves it to another tier, keeping its tensors."""
        self._native.resize(tier)

    def detach(self) -> Usage:
        """Detaches it, freeing everything it holds; returns the final usage."""
        return self._native.detach()

    @property
    def detached(self) -> bool:
        return self._native.detached

    @property
    def id(self) -> int:
        return self._native.id

    @property
    def tier(self) -> Tier:
        return self._native.tier

    @property
    def backend(self) -> str:
        return self._native.backend

    def __enter__(self) -> "Accelerator":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self._native.detached:
            self._native.detach()

    def __repr__(self) -> str:
        return f"Accelerator(id={self.id}, tier={self.tier.name!r}, backend={self.backend!r})"


class Program(_Ops):
    """Ops recorded on one accelerator and run together (one ``Run`` round trip on a remote
    accelerator; in order on a local one). Each op is checked when recorded and returns a
    pending ``Tensor`` that has data once the program ran. ``run(fetch)`` runs it and returns
    the tensors of ``fetch`` as numpy arrays, read in the same round trip; a ``with`` block runs
    it at its end unless the block raised. A program runs once."""

    __slots__ = ("_native",)

    def __init__(self, native: Any) -> None:
        self._native = native

    def run(self, fetch: Sequence[Tensor] = ()) -> list:
        """Runs the recorded ops; returns the tensors of ``fetch`` as numpy arrays."""
        return self._native.run(list(fetch))

    def __len__(self) -> int:
        return len(self._native)

    def __enter__(self) -> "Program":
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if kind is None:
            self._native.run([])


class Device:
    """A local device sliced into virtual accelerators. ``backend``: "auto" (the first CUDA GPU
    where there is one, else the CPU), "cpu" or "cuda"; ``overcommit``: admit accelerators
    beyond the device's measured capacity (their tiers' rates are then not guaranteed)."""

    __slots__ = ("_native",)

    def __init__(self, backend: str = "auto", overcommit: bool = False) -> None:
        self._native = _eia.Device(backend, overcommit)

    def attach(self, tier: str) -> Accelerator:
        """Attaches an accelerator of ``tier`` ("eia2.medium", "ml.eia1.large", …)."""
        return Accelerator(self._native.attach(tier))

    @property
    def backend(self) -> str:
        return self._native.backend

    def __repr__(self) -> str:
        return f"Device(backend={self.backend!r})"


class Connection:
    """A connection to an ``eia serve`` server (from ``eia.connect``)."""

    __slots__ = ("_native", "url")

    def __init__(self, native: Any, url: str) -> None:
        self._native = native
        self.url = url

    def attach(self, tier: str) -> Accelerator:
        """Attaches an accelerator of ``tier`` on the server."""
        return Accelerator(self._native.attach(tier))

    def tiers(self) -> List[Tier]:
        """The tiers the server offers."""
        return self._native.tiers()

    def __repr__(self) -> str:
        return f"Connection({self.url!r})"


def connect(
    url: str,
    token: Optional[str] = None,
    ca: Optional[Union[str, "_os.PathLike[str]"]] = None,
) -> Connection:
    """Connects to an ``eia serve`` server at ``url`` (``http://host:port``, or ``https://``
    with ``ca``, the path of the PEM certificate of the CA that signed the server's), with a
    bearer ``token`` when the server needs one."""
    return Connection(_eia.connect(url, token, None if ca is None else _os.fspath(ca)), url)


def _op_method(entry: dict) -> Any:
    name = entry["name"]

    def method(self: Any, *inputs: Any, **attrs: Any) -> Tensor:
        return self._native.apply(name, inputs, attrs)

    P = _inspect.Parameter
    params = [P("self", P.POSITIONAL_ONLY)]
    names = entry["inputs"]
    if entry["variadic"]:
        params.append(P(names[0], P.VAR_POSITIONAL, annotation="Tensor"))
    else:
        for i, n in enumerate(names):
            default = P.empty if i < entry["required"] else None
            params.append(P(n, P.POSITIONAL_ONLY, default=default, annotation="Tensor"))
    for attr, default in entry["attrs"].items():
        if attr in entry["required_attrs"]:
            default = P.empty
        params.append(P(attr, P.KEYWORD_ONLY, default=default))
    method.__signature__ = _inspect.Signature(params, return_annotation="Tensor")  # type: ignore[attr-defined]
    method.__name__ = method.__qualname__ = name
    inputs_doc = ", ".join(
        n if i < entry["required"] else f"[{n}]" for i, n in enumerate(names)
    ) + (", ..." if entry["variadic"] else "")
    if entry["attrs"]:
        attrs_doc = "\n".join(
            f"    {a} = {'(required)' if a in entry['required_attrs'] else repr(d)}"
            for a, d in entry["attrs"].items()
        )
    else:
        attrs_doc = "    (none)"
    method.__doc__ = (
        f"ONNX {entry['onnx']}: inputs {inputs_doc} (eia.Tensor, in ONNX order).\n\n"
        f"Attributes (keywords; ONNX defaults shown):\n{attrs_doc}\n\n"
        "Returns the output tensor (on a Program: pending until the program runs). A bad "
        "input raises the eia.Error subclass of its kind and changes nothing."
    )
    return method


for _entry in OPS:
    setattr(_Ops, _entry["name"], _op_method(_entry))
del _entry
