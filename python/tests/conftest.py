"""Fixtures of the eia Python suite: a local CPU device, a loopback `eia serve` (a real server
on 127.0.0.1, started once, bounded in time, killed at teardown), and `acc`, an accelerator on
either, so each test runs locally and remotely."""

import os
import pathlib
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest

import eia

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: The `eia` binary the server runs (scripts/test builds it before this suite).
EIA = os.environ.get("EIA_BINARY", str(ROOT / "target" / "release" / "eia"))
TIER = "eia2.medium"
START_TIMEOUT_S = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`eia serve` on loopback, with Prometheus metrics."""

    def __init__(self):
        self.port, self.metrics_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [EIA, "serve", "--backend", "cpu", "--overcommit",
             "--listen", f"127.0.0.1:{self.port}",
             "--metrics", f"127.0.0.1:{self.metrics_port}",
             "--capacity-fp32", "1", "--capacity-fp16", "8"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.conn = eia.connect(self.url)
                return
            except eia.NetworkError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    self.stop()
                    raise
                time.sleep(0.1)

    def rpc_count(self, method):
        """How many calls of `method` the server has answered."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
        counts = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("eia_rpc_duration_seconds_count{")
                  and f'method="{method}"' in line]
        return int(sum(counts))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def device():
    return eia.Device(backend="cpu", overcommit=True)


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(params=["local", "remote"])
def where(request):
    return request.param


@pytest.fixture
def acc(request, where, device):
    """An accelerator of TIER, local or on the loopback server; detached after the test."""
    if where == "local":
        a = device.attach(TIER)
    else:
        a = request.getfixturevalue("server").conn.attach(TIER)
    with a:
        yield a


@pytest.fixture
def rng():
    seed = int.from_bytes(os.urandom(8), "little")
    print(f"seed {seed}")
    return np.random.default_rng(seed)
