"""Adversarial: datagrams too short to hold a conn_id, sent to a port with workers.

Issue 9 item 8. The classic BPF program of ``intentra serve --workers N`` loaded
the conn_id at bytes 4..8; in a shorter datagram the load fails, the program
returns 0 and the kernel gives the datagram to worker 0. A flood of tiny junk
from any number of sources then all lands on one worker. Such datagrams now go
to the kernel's 4-tuple hash, like a HELLO. Real sockets on 127.0.0.1.
"""

from __future__ import annotations

import socket
import time

import pytest

from intentra.workers import reuseport_sockets


def drain(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    got = []
    while True:
        try:
            got.append(sock.recv(2048))
        except BlockingIOError:
            return got


@pytest.mark.parametrize("size", [0, 1, 4, 7])
def test_short_datagrams_are_spread_by_the_address_hash_not_sent_to_worker_0(
        size: int) -> None:
    socks, steered = reuseport_sockets("127.0.0.1", 0, 4)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(32)]
    try:
        if not steered:
            pytest.skip("this kernel refuses SO_ATTACH_REUSEPORT_CBPF")
        port = socks[0].getsockname()[1]
        for _ in range(3):
            for s in senders:
                s.sendto(b"\x01" * size, ("127.0.0.1", port))
        time.sleep(0.05)
        per_socket = [len(drain(s)) for s in socks]
        assert sum(per_socket) == 3 * len(senders)
        assert all(n % 3 == 0 for n in per_socket), "one source address, one worker"
        assert sum(1 for n in per_socket if n) >= 3, \
            f"32 sources of {size}-byte datagrams landed on {per_socket}"
    finally:
        for s in senders + socks:
            s.close()


def test_an_eight_byte_datagram_is_still_steered_by_its_conn_id() -> None:
    socks, steered = reuseport_sockets("127.0.0.1", 0, 4)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if not steered:
            pytest.skip("this kernel refuses SO_ATTACH_REUSEPORT_CBPF")
        port = socks[0].getsockname()[1]
        for conn_id in range(1, 9):
            sender.sendto(bytes(4) + conn_id.to_bytes(4, "big"), ("127.0.0.1", port))
        time.sleep(0.05)
        for index, sock in enumerate(socks):
            got = sorted(int.from_bytes(d[4:8], "big") for d in drain(sock))
            assert got == [c for c in range(1, 9) if c % 4 == index]
    finally:
        for s in [sender, *socks]:
            s.close()
