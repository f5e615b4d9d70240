"""Several worker processes on one UDP port (``intentra serve --workers N``).

The supervisor creates the N sockets itself, all with ``SO_REUSEPORT`` on one
address, in a fixed order, and attaches one classic BPF program to the group
(``SO_ATTACH_REUSEPORT_CBPF``). The program reads the header's ``conn_id``
(bytes 4..8 of the UDP payload, docs/protocol.md section 3) and picks socket
``conn_id % N``; a datagram with ``conn_id`` 0 (a HELLO) or too short to hold
one (under 8 bytes: the length is checked before the load) goes to the kernel's
usual 4-tuple hash. Worker ``i`` chooses every conn_id
it hands out as ``i`` modulo N (``Endpoint(conn_id_class=(i, N))``), so:

- a HELLO lands on the worker the source address hashes to, which creates the
  session with one of its own conn_ids;
- every later datagram of that session (FINISH, DATA, ACK, CLOSE) carries that
  conn_id and is steered to the same worker, whatever its source address: a
  client that roams to a new port or address stays on its worker.

Every worker holds the same static key and the same cookie master secret (docs/protocol.md
section 7), so a COOKIE from one worker is good on any other. A static key that
reconnects from another address may land on another worker, which cannot close
the old session with REPLACED; the old one then ends at IDLE_TIMEOUT.

What steering does not do: the conn_id is read before any check, so a flood of
garbage with chosen conn_ids can be aimed at any one worker (each drops it as
cheaply as a single process would). The handshake limits (MAX_HANDSHAKES_IN_FLIGHT,
MAX_HANDSHAKES_PER_IP) are each worker's own, so the port as a whole admits N
times as many pending handshakes (docs/security.md).

Without the BPF program (a kernel that refuses it), the kernel's 4-tuple hash
alone decides: sessions still work, but a roaming client's datagrams may reach
a worker that does not know its conn_id; they are dropped (counted as unknown
connections) and the client has to reconnect.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)

# Classic BPF opcodes (linux/filter.h).
_LD_W_LEN = 0x80   # BPF_LD | BPF_W | BPF_LEN: A = length of the UDP payload
_LD_W_ABS = 0x20   # BPF_LD | BPF_W | BPF_ABS: A = payload[k:k+4], big-endian
_JEQ_K = 0x15      # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35      # BPF_JMP | BPF_JGE | BPF_K
_MOD_K = 0x94      # BPF_ALU | BPF_MOD | BPF_K
_RET_A = 0x16      # BPF_RET | BPF_A
_RET_K = 0x06      # BPF_RET | BPF_K
_FALLBACK = 0xFFFFFFFF
"""An index past the group: the kernel falls back to its 4-tuple hash."""
CONN_ID_OFFSET = 4
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this worker when its supervisor dies (Linux prctl).

    A supervisor killed with SIGKILL cannot forward a signal: without this its
    workers would keep serving a port that nobody supervises.
    """
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def steering_program(count: int) -> list[tuple[int, int, int, int]]:
    """The classic BPF program: socket ``conn_id % count``, or the hash for conn_id 0.

    The length is checked first: a load past the end of a datagram shorter than
    8 bytes would abort the program with 0, sending every such datagram to
    worker 0 (issue 9 item 8); they go to the 4-tuple hash instead.
    """
    return [
        (_LD_W_LEN, 0, 0, 0),
        (_JGE_K, 0, 4, CONN_ID_OFFSET + 4),  # shorter than 8 bytes -> the last instruction
        (_LD_W_ABS, 0, 0, CONN_ID_OFFSET),
        (_JEQ_K, 2, 0, 0),          # conn_id == 0 -> the last instruction
        (_MOD_K, 0, 0, count),
        (_RET_A, 0, 0, 0),
        (_RET_K, 0, 0, _FALLBACK),
    ]


def attach_steering(sock: socket.socket, count: int) -> None:
    """Attach the conn_id steering program to ``sock``'s reuseport group.

    Raises:
        OSError: the kernel refuses it (no SO_ATTACH_REUSEPORT_CBPF support).
    """
    program = steering_program(count)
    filters = ctypes.create_string_buffer(
        b"".join(struct.pack("HBBI", *insn) for insn in program))
    fprog = struct.pack("HP", len(program), ctypes.addressof(filters))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def reuseport_sockets(host: str, port: int, count: int,
                      buffer_bytes: int = 1 << 22) -> tuple[list[socket.socket], bool]:
    """``count`` UDP sockets bound to one address, in group order; steering attached.

    Returns:
        The sockets (index i belongs to worker i) and whether conn_id steering
        is active.

    Raises:
        OSError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
            sock.bind((host, port))
            port = sock.getsockname()[1]
        steered = True
        try:
            attach_steering(sockets[0], count)
        except OSError:
            steered = False
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets, steered
