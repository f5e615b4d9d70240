"""The socket datapath: plain ``recvfrom``/``sendto``, or Linux UDP GSO/GRO batching.

With UDP generic segmentation offload (GSO, Linux 4.18+) one ``sendmsg``
carries up to 64 datagrams to one address: a concatenated buffer plus a
``UDP_SEGMENT`` control message giving the segment size; the kernel (or the
NIC) cuts it into datagrams of that size, the last one possibly shorter. With
UDP generic receive offload (GRO, Linux 5.0+) enabled on a socket, one
``recvmsg`` may return several datagrams of one flow coalesced into one
buffer, with a ``UDP_GRO`` control message giving the segment size; this
module splits such a buffer back into its datagrams before the core sees
them, so the core's checks (header, size limit) see every datagram as sent.

Both cut the syscalls per datagram, which dominate a Python sender: on
loopback a ``sendto`` costs about 2.4 us, a 40-segment GSO ``sendmsg`` about
0.13 us per datagram. On loopback, GRO coalesces only what a sender sent
with GSO (the loopback device has no receive-side GRO); on a NIC with GRO it
may also coalesce plain datagrams of one flow.

Choosing the path, per socket at bind time:
  - ``Transport.bind(..., datapath="auto" | "plain" | "gso")``; when the
    keyword is None (the default), the environment variable
    ``INTENTRA_DATAPATH`` (same values), else ``"auto"``.
  - ``"auto"``: GSO and GRO each if this socket supports it (a socket option
    check: no probe datagram is sent); ``"plain"``: neither; ``"gso"``:
    both, or :class:`OSError` if the socket refuses either.
  - A GSO send that the kernel refuses as unsupported (EIO: the route's device
    cannot checksum-offload, or IPsec; EINVAL: e.g. ``SO_NO_CHECK`` or a
    segment above the route's MTU) is resent datagram by datagram and GSO is
    turned off for the socket (``Datapath.name`` then reports it).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any, Final

from intentra.constants import MAX_PACKET_SIZE
from intentra.events import Address

SOL_UDP: Final[int] = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT: Final[int] = getattr(socket, "UDP_SEGMENT", 103)
UDP_GRO: Final[int] = getattr(socket, "UDP_GRO", 104)

#: Datagrams per GSO send (the kernel's UDP_MAX_SEGMENTS is 64 before Linux 6.11).
MAX_SEGMENTS: Final = 64
#: Bytes per GSO send (below the 65,507-byte UDP payload limit of IPv4, with room).
MAX_GSO_BYTES: Final = 65000
#: recvmsg buffer: the largest UDP payload, and headroom.
GRO_BUFFER: Final = 65535 + MAX_PACKET_SIZE
#: A datagram longer than this is passed to the core cut to this length (as recvfrom
#: does on the plain path): it is dropped as oversize either way.
RECEIVE_CAP: Final = MAX_PACKET_SIZE + 1

ENV_VAR: Final = "INTENTRA_DATAPATH"
MODES: Final = ("auto", "plain", "gso")

_GRO_CMSG_SPACE: Final = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
_SEGMENT_SIZE: Final = struct.Struct("=H")  # UDP_SEGMENT's cmsg: a native uint16
_GRO_SIZE: Final = struct.Struct("=i")      # UDP_GRO's cmsg: a native int
#: errno of a GSO send meaning "not through this socket/route": fall back for good.
_GSO_UNSUPPORTED: Final = frozenset(
    {errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EMSGSIZE})

#: Where a datagram's header holds its conn_id (intentra.core.wire.HEADER, "!BBHIII").
_CONN_ID: Final = slice(4, 8)

Run = tuple[list[bytes], int, Address]
"""Datagrams for one send: (payloads, segment size, address)."""


def requested_mode(datapath: str | None) -> str:
    """The mode asked for: the keyword, else ``$INTENTRA_DATAPATH``, else ``"auto"``.

    Raises:
        ValueError: an unknown mode (naming where it came from).
    """
    source = "datapath"
    if datapath is None:
        datapath = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
        source = ENV_VAR
    if datapath not in MODES:
        raise ValueError(f"{source}={datapath!r}: expected one of {', '.join(MODES)}")
    return datapath


def probe_gso(sock: socket.socket) -> bool:
    """Whether ``sock`` accepts UDP_SEGMENT (a getsockopt: nothing is sent)."""
    if not hasattr(sock, "sendmsg"):
        return False
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def enable_gro(sock: socket.socket) -> bool:
    """Turn UDP_GRO on for ``sock``; whether the kernel accepted it."""
    if not hasattr(sock, "recvmsg_into") or not _GRO_CMSG_SPACE:
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def plan_sends(out: Sequence[tuple[bytes, Address]], max_segments: int = MAX_SEGMENTS,
               max_bytes: int = MAX_GSO_BYTES) -> list[Run]:
    """Group the core's output into GSO runs, keeping its order entirely.

    A run is consecutive datagrams to one address and of one connection (the
    header's conn_id), all but the last of one size and the last not larger,
    at most ``max_segments`` of them and ``max_bytes`` in all (a lone
    datagram is a run of one). Only consecutive datagrams are grouped: the
    core flushes a session at a time, so a peer's datagrams come together,
    and nothing is reordered, even across addresses. One conn_id per run,
    because the receiver's kernel steers a GSO packet (with GRO on, a whole
    coalesced buffer) as one: a reuseport program routing by conn_id to
    workers must see one session per packet.
    """
    runs: list[Run] = []
    parts: list[bytes] = []
    addr: Address = ("", 0)
    conn = b""
    seg = 0
    total = 0
    room = False  # the current run may take another datagram
    for data, to in out:
        n = len(data)
        if room and n <= seg and len(parts) < max_segments and total + n <= max_bytes and \
                (to is addr or to == addr) and data[_CONN_ID] == conn:
            parts.append(data)
            total += n
            room = n == seg
            continue
        if parts:
            runs.append((parts, seg, addr))
        parts = [data]
        addr = to
        conn = data[_CONN_ID]
        seg = total = n
        room = n > 0
    if parts:
        runs.append((parts, seg, addr))
    return runs


def split_segments(view: memoryview, size: int, segment: int,
                   cap: int = RECEIVE_CAP) -> list[bytes]:
    """Cut a GRO-coalesced buffer (``view[:size]``) into datagrams of ``segment`` bytes.

    The last may be shorter. ``segment`` <= 0 (no UDP_GRO control message)
    means one datagram. Each is copied to ``bytes`` (the core keeps parts of
    them), at most ``cap`` bytes of it: a longer one is oversize anyway.
    """
    if segment <= 0 or segment >= size:
        return [view[:min(size, cap)].tobytes()]
    view = view[:size]  # the buffer is larger: no slice may run past the data
    if segment <= cap:
        return [view[off:off + segment].tobytes() for off in range(0, size, segment)]
    return [view[off:off + min(segment, size - off, cap)].tobytes()
            for off in range(0, size, segment)]


class Datapath:
    """Receives and sends for one non-blocking UDP socket, the plain way or batched.

    Attributes:
        gso, gro: whether each is in use now (GSO may turn off on a send error).
        send_calls, receive_calls: syscalls made (receives include the last,
            empty one of each drain), for measurement.
        gso_sends: GSO sends that carried several datagrams.
        gro_coalesced: received buffers that held several datagrams.
    """

    def __init__(self, sock: socket.socket, mode: str = "plain", native: bool = False) -> None:
        """Set the socket up for ``mode`` (see :func:`requested_mode`).

        ``native``: read with ``recvmmsg`` in C (``intentra._native.Reader``): the
        same datagrams and addresses, fewer calls and no Python per datagram.

        Raises:
            OSError: ``mode`` is ``"gso"`` and the socket refuses GSO or GRO.
        """
        if mode not in MODES:
            raise ValueError(f"datapath={mode!r}: expected one of {', '.join(MODES)}")
        self._sock = sock
        self.gso = False
        self.gro = False
        if mode != "plain":
            self.gso = probe_gso(sock)
            self.gro = enable_gro(sock)
            if mode == "gso" and not (self.gso and self.gro):
                missing = " and ".join(name for name, ok in (("UDP_SEGMENT (GSO)", self.gso),
                                                             ("UDP_GRO", self.gro)) if not ok)
                raise OSError(errno.ENOPROTOOPT,
                              f"datapath='gso': this socket refuses {missing}; "
                              "use datapath='auto' or 'plain' (Linux 5.0+ has both)")
        self.send_calls = 0
        self.receive_calls = 0
        self.gso_sends = 0
        self.gro_coalesced = 0
        self._buffer = bytearray(GRO_BUFFER if self.gro else 0)
        self._view = memoryview(self._buffer)
        self._reader: Any = None
        if native and sock.type == socket.SOCK_DGRAM and sock.family in (socket.AF_INET,
                                                                        socket.AF_INET6):
            from intentra import _native  # noqa: PLC0415 - only where it was built

            self._reader = _native.Reader(sock.fileno(), self.gro)

    @property
    def name(self) -> str:
        """``"gso+gro"``, ``"gso"``, ``"gro"`` or ``"plain"``: what is in use now."""
        if self.gso and self.gro:
            return "gso+gro"
        return "gso" if self.gso else "gro" if self.gro else "plain"

    # ---------------------------------------------------------------- receive

    def receive(self, limit: int) -> list[tuple[bytes, Address]]:
        """Drain the socket until it would block or about ``limit`` datagrams were read."""
        reader = self._reader
        if reader is not None:
            calls, coalesced = reader.calls, reader.coalesced
            batch: list[tuple[bytes, Address]] = reader.read(limit)
            self.receive_calls += reader.calls - calls
            self.gro_coalesced += reader.coalesced - coalesced
            return batch
        if self.gro:
            return self._receive_gro(limit)
        recv = self._sock.recvfrom
        batch = []
        append = batch.append
        calls = 0
        for calls in range(1, limit + 1):  # noqa: B007 - the count is read after the loop
            try:
                append(recv(RECEIVE_CAP))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # e.g. an ICMP error queued on the socket
        self.receive_calls += calls
        return batch

    def _receive_gro(self, limit: int) -> list[tuple[bytes, Address]]:
        recv = self._sock.recvmsg_into
        buffers = [self._buffer]
        view = self._view
        batch: list[tuple[bytes, Address]] = []
        append = batch.append
        calls = 0
        for calls in range(1, limit + 1):  # noqa: B007 - the count is read after the loop
            try:
                size, ancdata, _flags, addr = recv(buffers, _GRO_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            segment = 0
            for level, kind, data in ancdata:
                if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
                    segment = _GRO_SIZE.unpack_from(data)[0]
            if 0 < segment < size:
                self.gro_coalesced += 1
                for datagram in split_segments(view, size, segment):
                    append((datagram, addr))
                if len(batch) >= limit:
                    break
            else:
                append((view[:min(size, RECEIVE_CAP)].tobytes(), addr))
        self.receive_calls += calls
        return batch

    # ------------------------------------------------------------------- send

    def send(self, out: Sequence[tuple[bytes, Address]]) -> int:
        """Send the core's output in order; returns how many datagrams failed."""
        errors = 0
        if not self.gso or len(out) == 1:
            sendto = self._sock.sendto
            for data, addr in out:
                try:
                    sendto(data, addr)
                except OSError:
                    errors += 1  # full buffer or unreachable: UDP may drop
            self.send_calls += len(out)
            return errors
        sock = self._sock
        for parts, segment, addr in plan_sends(out):
            if len(parts) > 1 and self.gso:
                self.send_calls += 1
                try:
                    sock.sendmsg(parts, [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(segment))],
                                 0, addr)
                    self.gso_sends += 1
                    continue
                except OSError as exc:
                    if exc.errno not in _GSO_UNSUPPORTED:
                        errors += len(parts)  # e.g. a full buffer: all of them are lost
                        continue
                    self.gso = False  # this socket's route cannot: send them one by one
            for data in parts:
                self.send_calls += 1
                try:
                    sock.sendto(data, addr)
                except OSError:
                    errors += 1
        return errors


__all__ = ["ENV_VAR", "MAX_GSO_BYTES", "MAX_SEGMENTS", "MODES", "Datapath", "enable_gro",
           "plan_sends", "probe_gso", "requested_mode", "split_segments"]
