"""Authorisation: who may hold a session, and who may read the key (docs/protocol.md section 9).

Attacks: an initiator whose key is not on the responder's allow-list; a
responder whose key is not the one the initiator pinned (or is one bit off);
a man in the middle that sits on the path, terminates Noise with each side
using ITS OWN key and relays between them; attackers who plant a symlink where
a key file will be written, loosen a key file's permissions, or replace its
contents. The refusing side must create no session, emit the right event
(HandshakeFailed "authentication" at an initiator; a silent, counted drop at a
responder) and count it; the refused attacker must learn no plaintext.

The protocol cases run on the sans-I/O core over the in-memory link (fake
clock); the man in the middle is repeated once with real Transports on
127.0.0.1, where the refusal surfaces as AuthenticationError or
HandshakeTimeoutError. Key files use a real temporary directory, and the CLI
is run in-process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import stat
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import intentra.cli
from aiohelp import run, step, wait_until
from corelink import Datagram, Link, Node, is_hs, seeded_key
from intentra import (
    AuthenticationError,
    EndpointConfig,
    HandshakeTimeoutError,
    Intent,
    KeyFileError,
    PrivateKey,
    PublicKey,
    Transport,
)
from intentra.constants import CloseReason, HsKind
from intentra.events import (
    HandshakeCompleted,
    HandshakeConfirmed,
    HandshakeFailed,
    MessageReceived,
    SessionClosed,
)

RELIABLE = Intent.RELIABLE
SECRETS = [b"secret-%d" % i for i in range(5)]


def flip(key: bytes, bit: int) -> bytes:
    """``key`` with one bit flipped (bit 0: lowest of byte 0; 255: highest of byte 31)."""
    raw = bytearray(key)
    raw[bit // 8] ^= 1 << (bit % 8)
    return bytes(raw)


def other_key(name: str) -> bytes:
    return seeded_key(f"other-{name}").public_key.to_bytes()


def completed(node: Node, initiator: bool | None = None) -> list[HandshakeCompleted]:
    return [e for e in node.of_type(HandshakeCompleted)
            if initiator is None or e.initiator == initiator]


def assert_initiator_refused(link: Link, a: Node, server_addr: tuple[object, ...],
                             cid: int) -> None:
    """docs/protocol.md section 9 at the initiator: an authentication error, no session, counted."""
    assert a.of_type(HandshakeFailed) == [HandshakeFailed(cid, server_addr, "authentication")]
    assert completed(a) == []
    assert a.of_type(MessageReceived) == []
    assert cid not in a.endpoint.sessions
    assert a.endpoint.connections_active == 0
    assert a.endpoint.stats.handshakes_rejected == 1
    assert a.endpoint.stats.handshakes_completed == 0
    # It never sent FINISH: the other side never learns its static key.
    assert link.sent_by(a, is_hs(HsKind.FINISH)) == []
    assert a.endpoint.get_timer() is None


def assert_responder_refused(b: Node) -> None:
    """protocol.md §9 at the responder: dropped, counted, no session, no event, no delivery."""
    assert completed(b) == []
    assert b.of_type(MessageReceived) == []
    assert b.endpoint.sessions == {}
    assert b.endpoint.handshakes_in_flight == 0
    assert b.endpoint.connections_active == 0
    assert b.endpoint.stats.handshakes_rejected == 1
    assert b.endpoint.stats.handshakes_completed == 0
    assert b.endpoint._by_peer_key == {}


# ------------------------------------------------------------------ the initiator


PINS: dict[str, Callable[[bytes], bytes | None]] = {
    "no-pin": lambda server: None,
    "pin-right": lambda server: server,
    "pin-other-key": lambda server: other_key("pin"),
    "pin-bit0-off": lambda server: flip(server, 0),
    "pin-bit255-off": lambda server: flip(server, 255),  # X25519 ignores it; pinning must not
}
INITIATOR_LISTS: dict[str, Callable[[bytes], list[bytes] | None]] = {
    "no-list": lambda server: None,
    "listed": lambda server: [other_key("a"), server, other_key("b")],
    "unlisted": lambda server: [other_key("a"), flip(server, 7)],
    "empty-list": lambda server: [],
}


@pytest.mark.parametrize("allow", list(INITIATOR_LISTS))
@pytest.mark.parametrize("pin", list(PINS))
def test_initiator_accepts_only_a_pinned_and_listed_responder(pin: str, allow: str) -> None:
    link = Link(3)
    b = link.add("server")
    a = link.add("client", allowed_peers=INITIATOR_LISTS[allow](b.public))
    cid = link.connect(a, b, server_key=PINS[pin](b.public))
    ok = pin in ("no-pin", "pin-right") and allow in ("no-list", "listed")
    # A refused key does not end the handshake at once (a forger could send one,
    # test_handshake_blocking.py): it fails with "authentication" at its timeout.
    link.advance(1.0 if ok else a.endpoint.config.handshake_timeout + 0.1)
    if ok:
        assert [e.peer_key for e in completed(a)] == [b.public]
        assert a.of_type(HandshakeConfirmed) == [HandshakeConfirmed(cid)]
        link.send(a, cid, b"hello")
        link.advance(0.1)
        assert b.payloads() == [b"hello"]
        assert a.endpoint.stats.handshakes_rejected == 0
        return
    assert_initiator_refused(link, a, b.addr, cid)
    # The responder is left with a pending handshake it cannot finish; it expires.
    link.advance(b.endpoint.config.handshake_timeout + 0.5)
    assert completed(b) == []
    assert b.endpoint.sessions == {}
    assert b.endpoint.handshakes_in_flight == 0


# ------------------------------------------------------------------ the responder


RESPONDER_LISTS: dict[str, Callable[[bytes], list[bytes]]] = {
    "listed": lambda client: [client],
    "listed-among-100": lambda client: [other_key(f"n{i}") for i in range(99)] + [client],
    "unlisted": lambda client: [other_key("x")],
    "empty-list": lambda client: [],
    "bit0-off": lambda client: [flip(client, 0)],
    "bit255-off": lambda client: [flip(client, 255)],
}


@pytest.mark.parametrize("allow", list(RESPONDER_LISTS))
def test_responder_admits_only_listed_initiators(allow: str) -> None:
    link = Link(4)
    a = link.add("client")
    b = link.add("server", allowed_peers=RESPONDER_LISTS[allow](a.public))
    timeout = a.endpoint.config.handshake_timeout
    cid = link.connect(a, b, server_key=b.public)
    link.advance(0.5)
    # Noise XX: the initiator proves its key last, so it counts itself established
    # and may send at once (docs/protocol.md section 7 step 4); only the responder can refuse.
    assert [e.conn_id for e in completed(a)] == [cid]
    for s in SECRETS:
        link.send(a, cid, s)
    link.advance(timeout + 1.0)
    if allow.startswith("listed"):
        assert b.payloads() == SECRETS
        assert a.established(cid)
        assert b.endpoint.stats.handshakes_rejected == 0
        return
    assert_responder_refused(b)
    assert b.payloads() == []
    # The refused initiator is never confirmed: its session ends with TIMEOUT at the
    # handshake deadline and hands back every message the responder never accepted.
    assert a.of_type(HandshakeConfirmed) == []
    closed = a.closed(cid)
    assert closed is not None
    assert (closed.reason, closed.by_peer) == (CloseReason.TIMEOUT, False)
    assert [d for d, *_ in closed.pending] == SECRETS
    [(t_closed, _)] = a.timed(SessionClosed)
    assert t_closed <= timeout + 0.1
    # Its DATA and every resent FINISH were dropped as unknown, and got no reply.
    encrypted = link.sent_by(a, lambda d: d.hs_kind is None)
    finishes = link.sent_by(a, is_hs(HsKind.FINISH))
    assert encrypted and len(finishes) > 1
    assert b.endpoint.stats.packets_dropped_unknown == len(encrypted) + len(finishes) - 1
    to_a = [d.hs_kind for d in link.sent_by(b) if d.dst == a.addr]
    assert to_a == [HsKind.COOKIE, HsKind.RESPONSE]


def test_refused_initiators_free_their_handshake_slots_at_once() -> None:
    """Attackers from one IP, refused at FINISH, do not lock out a listed peer of that IP."""
    link = Link(5)
    ip = "192.0.2.50"
    friend_key = seeded_key("friend")
    b = link.add("server", allowed_peers=[friend_key.public_key.to_bytes()])
    per_ip = b.endpoint.config.max_handshakes_per_ip
    attackers = [link.add(f"attacker{i}", addr=(ip, 6000 + i)) for i in range(3 * per_ip)]
    friend = link.add("friend", key=friend_key, addr=(ip, 7000))
    for wave in range(3):
        for a in attackers[wave * per_ip:(wave + 1) * per_ip]:
            link.connect(a, b)
        link.advance(0.3)
        assert b.endpoint.handshakes_in_flight == 0
        assert b.endpoint._pending_per_ip == {}
        assert b.endpoint.stats.handshakes_rejected == (wave + 1) * per_ip
    assert b.endpoint.sessions == {}
    _, bid = link.establish(friend, b, within=0.3)
    assert b.endpoint.sessions[bid].peer_key == friend.public
    assert completed(b) == [HandshakeCompleted(bid, friend.public, friend.addr, False)]


# ------------------------------------------------------------------ man in the middle


@dataclass
class Mitm:
    """Mallory on the path: she receives whatever the client sends to the server's
    address, answers as the server's address, and keeps her own session with the
    server; she terminates Noise on both sides with her own key and relays."""

    link: Link
    client: Node
    server: Node
    mallory: Node
    up: int = 0
    down: int | None = None
    seen: int = 0
    backlog_up: list[bytes] = field(default_factory=list)
    backlog_down: list[bytes] = field(default_factory=list)

    def relay(self) -> None:
        m, link = self.mallory, self.link
        for _, event in m.log[self.seen:]:
            if isinstance(event, HandshakeCompleted) and not event.initiator:
                self.down = event.conn_id
            elif isinstance(event, MessageReceived):
                if event.conn_id == self.down:
                    self.backlog_up.append(event.data)
                elif event.conn_id == self.up:
                    self.backlog_down.append(event.data)
        self.seen = len(m.log)
        if self.backlog_up and m.established(self.up):
            for data in self.backlog_up:
                link.send(m, self.up, data)
            self.backlog_up.clear()
        if self.backlog_down and self.down is not None and m.established(self.down):
            for data in self.backlog_down:
                link.send(m, self.down, data)
            self.backlog_down.clear()

    def run(self, seconds: float) -> None:
        end = self.link.now + seconds
        while self.link.now < end:
            self.link.advance(0.005)
            self.relay()


def intercept(link: Link, client: Node, server: Node, mallory: Node) -> Mitm:
    def divert(d: Datagram) -> bool:
        link.inject(d.data, d.src, mallory)  # the client's packets reach Mallory instead
        return True

    def spoof(d: Datagram) -> bool:
        if d.dst != client.addr:
            return False
        link.inject(d.data, server.addr, client)  # Mallory answers as the server's address
        return True

    link.path(client, server).drop = divert
    link.path(mallory, client).drop = spoof
    return Mitm(link, client, server, mallory, up=link.connect(mallory, server))


DEFENCES = {
    # name: (client pins the server key, client allow-list, server allow-list)
    "none": (False, False, False),
    "client-pins": (True, False, False),
    "client-allow-list": (False, True, False),
    "server-allow-list": (False, False, True),
    "pins-and-server-allow-list": (True, False, True),
}


@pytest.mark.parametrize("defence", list(DEFENCES))
def test_man_in_the_middle_with_its_own_key(defence: str) -> None:
    pins, client_list, server_list = DEFENCES[defence]
    link = Link(6)
    client_key = seeded_key("client")
    b = link.add("server", allowed_peers=[client_key.public_key.to_bytes()]
                 if server_list else None)
    a = link.add("client", key=client_key,
                 allowed_peers=[b.public] if client_list else None)
    m = link.add("mallory")
    mitm = intercept(link, a, b, m)
    cid = link.connect(a, b, server_key=b.public if pins else None)
    mitm.run(0.5)
    if a.established(cid):
        for s in SECRETS:
            link.send(a, cid, s)
    mitm.run(b.endpoint.config.handshake_timeout + 1.0)

    read_by_mallory = m.payloads(conn_id=mitm.down) if mitm.down is not None else []
    client_refused = pins or client_list
    if client_refused:
        assert_initiator_refused(link, a, b.addr, cid)
        assert read_by_mallory == []
        assert completed(m, initiator=False) == [], "Mallory learned the client's key"
    else:
        # The client, trusting whatever key answers, talks to Mallory: only a pinned
        # key (or an allow-list) at the initiator protects what it sends.
        assert [e.peer_key for e in completed(a)] == [m.public]
        assert read_by_mallory == SECRETS
    if server_list:
        assert_responder_refused(b)
        up_closed = m.closed(mitm.up)
        assert up_closed is not None and up_closed.reason is CloseReason.TIMEOUT
        assert m.of_type(HandshakeConfirmed) == []
    else:
        [done] = completed(b)
        assert done.peer_key == m.public  # the server only ever met Mallory's key
    if not client_refused and not server_list:
        assert b.payloads() == SECRETS  # the relay works: the defences are what stop it
    else:
        assert b.payloads() == []


# ------------------------------------------------------------------ real sockets


LOCAL = "127.0.0.1:0"
FAST = EndpointConfig(handshake_timeout=0.5)


@contextlib.asynccontextmanager
async def transports() -> AsyncIterator[list[Transport]]:
    made: list[Transport] = []
    try:
        yield made
    finally:
        for t in made:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t.close(0.1), 5)


async def bind(made: list[Transport], key: PrivateKey | None = None,
               allowed: list[PublicKey] | None = None,
               config: EndpointConfig | None = None) -> Transport:
    t = await Transport.bind(LOCAL, key if key is not None else PrivateKey.generate(), allowed,
                             config=config)
    made.append(t)
    return t


async def relay(mallory: Transport) -> None:
    """Mallory's relay: every message from one peer goes to every other peer."""
    while True:
        msg = await mallory.receive()
        for peer in mallory.peers:
            if peer is not msg.peer:
                peer.send_nowait(msg.data, msg.intent)


def test_transport_man_in_the_middle_is_refused_by_pinning() -> None:
    async def body() -> None:
        async with transports() as made:
            server = await bind(made)
            mallory = await bind(made)
            client = await bind(made, config=EndpointConfig(handshake_timeout=1.0))
            task = asyncio.create_task(relay(mallory))
            try:
                await step(mallory.connect(server.local_address, server.public_key))
                # The client was sent to Mallory's address; it pins the real server key.
                with pytest.raises(AuthenticationError):  # at the handshake timeout
                    await step(client.connect(mallory.local_address, server.public_key), 3)
                assert client.peers == []
                assert client.endpoint.sessions == {}
                assert client.endpoint.stats.handshakes_rejected == 1
                await asyncio.sleep(0.1)
                assert [p.public_key for p in mallory.peers] == [server.public_key]
                assert mallory.endpoint.stats.handshakes_completed == 1  # only upstream
                assert server.receive_nowait() is None
                # Control: unpinned, the same client is relayed through Mallory.
                fooled = await step(client.connect(mallory.local_address))
                assert fooled.public_key == mallory.public_key
                await step(fooled.send(b"read by mallory", RELIABLE))
                got = await step(server.receive())
                assert got.data == b"read by mallory"
                assert got.peer.public_key == mallory.public_key
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    run(body())


def test_transport_man_in_the_middle_is_refused_by_the_servers_allow_list() -> None:
    async def body() -> None:
        async with transports() as made:
            client_key = PrivateKey.generate()
            server = await bind(made, allowed=[client_key.public_key])
            mallory = await bind(made, config=FAST)
            with pytest.raises(HandshakeTimeoutError):
                await step(mallory.connect(server.local_address, server.public_key), 3)
            assert mallory.peers == []
            await wait_until(lambda: server.endpoint.stats.handshakes_rejected >= 1, 3,
                             "the server to refuse Mallory's key")
            assert server.peers == []
            assert server.endpoint.sessions == {}
            assert server.endpoint.stats.handshakes_completed == 0
            # The listed client is let in directly.
            client = await bind(made, key=client_key)
            peer = await step(client.connect(server.local_address, server.public_key))
            assert peer.public_key == server.public_key
            await wait_until(lambda: len(server.peers) == 1, 3, "the client's session")
            assert server.peers[0].public_key == client_key.public_key
    run(body())


# ------------------------------------------------------------------ key files


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """``intentra ARGS`` in-process (the CLI's module-level loop choice is restored)."""
    monkeypatch.setattr(intentra.cli, "_LOOP", intentra.cli._LOOP)
    return intentra.cli.main


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("planted", ["dangling", "to-existing-file"])
def test_save_refuses_to_write_through_a_planted_symlink(tmp_path: Path, planted: str) -> None:
    """An attacker who can write the directory links the key path to a file they read."""
    target = tmp_path / "attacker-readable"
    if planted == "to-existing-file":
        target.write_text("attacker's file\n")
        target.chmod(0o644)
    path = tmp_path / "server.key"
    path.symlink_to(target)
    with pytest.raises(KeyFileError, match="exists"):
        PrivateKey.generate().save(path)
    assert path.is_symlink()
    if planted == "dangling":
        assert not target.exists(), "the key was written through the symlink"
    else:
        assert target.read_text() == "attacker's file\n"
        assert _mode(target) == 0o644


def test_cli_keygen_refuses_a_planted_symlink(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        run_cli: Callable[[list[str]], int]) -> None:
    target = tmp_path / "attacker-readable"
    path = tmp_path / "server.key"
    path.symlink_to(target)
    assert run_cli(["keygen", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("intentra: error:") and "exists" in err
    assert not target.exists()


def test_cli_keygen_creates_an_owner_only_file_even_under_umask_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        run_cli: Callable[[list[str]], int]) -> None:
    path = tmp_path / "server.key"
    old = os.umask(0)
    try:
        assert run_cli(["keygen", str(path)]) == 0
    finally:
        os.umask(old)
    out, err = capsys.readouterr()
    assert err == ""
    assert _mode(path) == 0o600
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PrivateKey.load(path).public_key.to_base64() == out.strip()


@pytest.mark.parametrize(("target_mode", "warns"), [(0o644, True), (0o600, False)])
def test_load_through_a_symlink_judges_the_target_file(tmp_path: Path, target_mode: int,
                                                       warns: bool) -> None:
    key = PrivateKey.generate()
    real = tmp_path / "real.key"
    real.write_text(key.to_base64() + "\n")
    real.chmod(target_mode)
    link = tmp_path / "server.key"
    link.symlink_to(real)  # the link itself is lrwxrwxrwx whatever the target is
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert PrivateKey.load(link) == key
    messages = [str(w.message) for w in caught]
    if warns:
        assert len(messages) == 1 and "chmod 600" in messages[0], messages
        assert f"{target_mode:04o}" in messages[0]
    else:
        assert messages == []


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o610, 0o601, 0o200 | 0o020])
def test_load_warns_when_others_could_replace_the_key(tmp_path: Path, mode: int) -> None:
    """Group or other write/execute bits alone (not read) still warn: someone else can
    swap the identity."""
    key = PrivateKey.generate()
    path = tmp_path / "server.key"
    path.write_text(key.to_base64() + "\n")
    path.chmod(mode | 0o400)
    with pytest.warns(UserWarning, match="chmod 600"):
        assert PrivateKey.load(path) == key


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


REPLACED: dict[str, Callable[[Path], object]] = {
    "empty": lambda p: p.write_bytes(b""),
    "two-keys": lambda p: p.write_text(
        PrivateKey.generate().to_base64() + "\n" + PrivateKey.generate().to_base64() + "\n"),
    "key-and-junk-line": lambda p: p.write_text(
        PrivateKey.generate().to_base64() + "\nrm -rf /\n"),
    "pem-private-key": lambda p: p.write_text(
        "-----BEGIN PRIVATE KEY-----\n" + _b64(bytes(16) + os.urandom(32))
        + "\n-----END PRIVATE KEY-----\n"),
    "utf16-key": lambda p: p.write_text(PrivateKey.generate().to_base64(), encoding="utf-16"),
    "nul-inside": lambda p: p.write_bytes(
        PrivateKey.generate().to_base64()[:20].encode() + b"\x00"
        + PrivateKey.generate().to_base64()[21:].encode()),
    "one-mebibyte": lambda p: p.write_text(_b64(os.urandom(786_432))),
    "directory": lambda p: p.mkdir(),
}


@pytest.mark.parametrize("content", list(REPLACED))
def test_replaced_key_file_is_refused_with_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "server.key"
    REPLACED[content](path)
    if not path.is_dir():
        path.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the refusal is an error, not a warning
        with pytest.raises(KeyFileError) as info:
            PrivateKey.load(path)
    message = str(info.value)
    assert str(path) in message, message
    assert len(message) < 300, "the error quotes the file's content"
    assert "\n" not in message


def test_swapped_key_file_changes_the_identity_and_pinned_clients_refuse(tmp_path: Path) -> None:
    """A key file replaced with another valid key cannot be told apart when loaded,
    but the server's identity changes: every client that pinned it refuses."""
    path = tmp_path / "server.key"
    PrivateKey.generate().save(path)
    pinned = PrivateKey.load(path).public_key.to_bytes()
    path.unlink()
    PrivateKey.generate().save(path)  # the attacker's key, same path, same mode
    swapped = PrivateKey.load(path)
    link = Link(8)
    b = link.add("server", key=swapped)
    a = link.add("client")
    cid = link.connect(a, b, server_key=pinned)
    link.advance(a.endpoint.config.handshake_timeout + 0.1)
    assert_initiator_refused(link, a, b.addr, cid)


@pytest.mark.parametrize("via", ["file", "symlink"])
def test_cli_serve_warns_on_stderr_about_a_world_readable_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], via: str,
        run_cli: Callable[[list[str]], int]) -> None:
    key = PrivateKey.generate()
    real = tmp_path / "open.key"
    real.write_text(key.to_base64() + "\n")
    real.chmod(0o644)
    path = real
    if via == "symlink":
        path = tmp_path / "server.key"
        path.symlink_to(real)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        # The port is taken, so serve stops right after loading the key.
        status = run_cli(["--loop", "asyncio", "serve", "--bind", f"127.0.0.1:{port}",
                           "--key", str(path)])
    out, err = capsys.readouterr()
    assert status == 2
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("intentra: warning:") and "chmod 600" in lines[0], lines
    assert str(path) in lines[0] and "0644" in lines[0]
    assert lines[1].startswith("intentra: error:") and str(port) in lines[1]
    assert key.to_base64() not in out + err

