"""The native datapath's pieces and how it is chosen (docs/native.md).

The behaviour of the whole receive path is compared with the Python reference in
tests/adversarial/test_native_differential.py; here: the AEAD against
cryptography's, the recvmmsg reader against the Python datapath on
real sockets, the choice (``INTENTRA_NATIVE``, ``Transport.native``,
``intentra --version``) and the build's fallback when no compiler is found.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

import intentra.native
from aiohelp import run
from intentra import PrivateKey, Transport
from intentra.aio.datapath import SOL_UDP, UDP_SEGMENT, Datapath
from intentra.core.endpoint import Endpoint

ROOT = Path(__file__).resolve().parents[1]
built = pytest.mark.skipif(not intentra.native.available(), reason="intentra._native not built")


@built
@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12),
       data=st.binary(max_size=2100), aad=st.binary(max_size=40), flip=st.integers(0, 10_000))
def test_the_c_aead_is_aes_256_gcm(key: bytes, nonce: bytes, data: bytes, aad: bytes,
                                   flip: int) -> None:
    """Byte for byte what cryptography's AESGCM computes; any change fails to open."""
    native = intentra.native.module().AESGCM(key)
    sealed = native.encrypt(nonce, data, aad)
    assert sealed == AESGCM(key).encrypt(nonce, data, aad)
    assert native.decrypt(nonce, sealed, aad) == data
    tampered = bytearray(sealed)
    tampered[flip % len(tampered)] ^= 1 << (flip % 8)
    with pytest.raises(InvalidTag):
        native.decrypt(nonce, bytes(tampered), aad)
    with pytest.raises(InvalidTag):
        native.decrypt(nonce, sealed, aad + b"x")
    with pytest.raises(InvalidTag):
        native.decrypt(nonce, sealed[:15], aad)


@built
def test_the_c_aead_refuses_bad_arguments() -> None:
    module = intentra.native.module()
    with pytest.raises(ValueError, match="32 bytes"):
        module.AESGCM(bytes(16))
    with pytest.raises(ValueError, match="12 bytes"):
        module.AESGCM(bytes(32)).encrypt(bytes(8), b"x", b"")


# ------------------------------------------------------------- the reader

def _send_traffic(sender: socket.socket, to: tuple[str, int]) -> None:
    """Plain datagrams, an oversize one, and GSO batches (coalesced by GRO on receipt)."""
    for size in (1, 16, 100, 1200, 2048, 2049, 3000):
        sender.sendto(bytes([size & 0xFF]) * size, to)
    for segment in (60, 1200):
        parts = [bytes([i]) * segment for i in range(5)] + [b"tail"]
        try:
            sender.sendmsg(parts, [(SOL_UDP, UDP_SEGMENT, segment.to_bytes(2, "little"))], 0,
                           to)
        except OSError:
            for part in parts:  # no GSO here: the same datagrams, one by one
                sender.sendto(part, to)


@built
@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"),
                                              (socket.AF_INET6, "::1")])
@pytest.mark.parametrize("mode", ["plain", "auto"])
def test_the_reader_returns_what_the_python_datapath_returns(
        family: socket.AddressFamily, host: str, mode: str) -> None:
    """recvmmsg in C: the same datagrams (GRO buffers cut, oversize ones cut to the cap)
    and the same address tuples as the Python datapath, in the same order."""
    results = []
    for native in (False, True):
        receiver = socket.socket(family, socket.SOCK_DGRAM)
        sender = socket.socket(family, socket.SOCK_DGRAM)
        try:
            receiver.bind((host, 0))
            sender.bind((host, 0))
            receiver.setblocking(False)
            path = Datapath(receiver, mode, native=native)
            _send_traffic(sender, receiver.getsockname()[:2])
            got: list[tuple[bytes, object]] = []
            for _ in range(50):
                got += path.receive(512)
                if len(got) >= 19:
                    break
            results.append((got, path.receive_calls > 0))
            results.append(sender.getsockname())
        finally:
            receiver.close()
            sender.close()
    (py, _), py_addr, (nat, _), nat_addr = results
    assert len(py) == len(nat) == 19
    assert [d for d, _ in py] == [d for d, _ in nat]
    assert all(a == py_addr for _, a in py) and all(a == nat_addr for _, a in nat)
    assert max(len(d) for d, _ in nat) == 2049  # cut to RECEIVE_CAP, dropped as oversize


# ------------------------------------------------------------- the choice

def test_the_environment_forces_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTRA_NATIVE", "0")
    endpoint = Endpoint(os.urandom(32), os.urandom)
    assert not endpoint.native and endpoint._native is None
    assert intentra.native.describe(False) == "python (INTENTRA_NATIVE=0)"


@built
def test_an_endpoint_runs_native_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTENTRA_NATIVE", raising=False)
    endpoint = Endpoint(os.urandom(32), os.urandom)
    assert endpoint.native
    assert Endpoint(os.urandom(32), os.urandom, native=False).native is False


@pytest.mark.skipif(intentra.native.available(), reason="only where the module is missing")
def test_native_true_without_the_module_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="INTENTRA_NATIVE=0"):
        Endpoint(os.urandom(32), os.urandom, native=True)


@pytest.mark.parametrize("setting", ["0", ""])
def test_the_transport_names_its_engine(setting: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTENTRA_NATIVE", setting)
    run(_engine_exchange(setting != "0" and intentra.native.available()))


async def _engine_exchange(expect_native: bool) -> None:
    async with Transport.bind("127.0.0.1:0", PrivateKey.generate()) as t:
        assert t.native is expect_native
        assert t.engine.startswith("native (C, OpenSSL" if expect_native else "python")
        label = "native" if expect_native else "python"
        assert f'intentra_engine_info{{engine="{label}"}} 1.0' in t.metrics_text()
        async with Transport.bind("127.0.0.1:0", PrivateKey.generate()) as other:
            peer = await other.connect(t.local_address, t.public_key)
            await peer.send(b"over the native path" if expect_native else b"over python")
            msg = await t.receive(timeout=5)
            assert msg.data.startswith(b"over")


@pytest.mark.parametrize("setting", ["0", "1"])
def test_version_names_the_datapath(setting: str) -> None:
    env = {**os.environ, "INTENTRA_NATIVE": setting}
    out = subprocess.run([sys.executable, "-m", "intentra", "--version"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.startswith("intentra ")
    if setting == "0":
        assert "datapath: python (INTENTRA_NATIVE=0)" in out
    elif intentra.native.available():
        assert "datapath: native (C, OpenSSL" in out
    else:
        assert "datapath: python (the native module is not built)" in out


def test_without_a_compiler_the_build_skips_the_extension(tmp_path: Path) -> None:
    """setup.py's optional build: a failing compiler leaves a warning, not a failed install."""
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    (tmp_path / "src" / "intentra").mkdir(parents=True)
    shutil.copy(ROOT / "src" / "intentra" / "_native.c", tmp_path / "src" / "intentra")
    env = {**os.environ, "CC": "false", "LDSHARED": "false"}
    run = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert "native datapath (C on OpenSSL) was not built" in run.stderr
    assert not list(tmp_path.rglob("_native*.so"))
