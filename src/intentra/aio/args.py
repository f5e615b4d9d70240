"""The values the asyncio API accepts, checked and converted in one place.

Addresses (``"host:port"``, ``"[v6]:port"`` or a tuple), intents and close reasons
given as enum members, values or names, and batch sizes: each either converted or
refused with an :class:`~intentra.errors.InvalidArgumentError` (a ``ValueError`` for
addresses) whose message says what to pass.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import TypeVar

from intentra.constants import CloseReason, Intent
from intentra.errors import InvalidArgumentError


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"`` or ``(host, port)`` to ``(host, port)``.

    Raises:
        ValueError: with a message naming the expected form.
    """
    if isinstance(address, tuple):
        host, port = address[0], address[1]
    else:
        text = address.strip()
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise ValueError(f"bad address {address!r}: expected [IPv6]:PORT")
            port_text = rest[1:]
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or ":" in host:
                raise ValueError(f"bad address {address!r}: expected HOST:PORT or [IPv6]:PORT")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"bad address {address!r}: port {port_text!r} is not a number") \
                from None
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad address {address!r}: port must be 0..65535")
    return str(host or "0.0.0.0"), port


def address_family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        return infos[0][0]


_E = TypeVar("_E", Intent, CloseReason)
IntentLike = Intent | int | str
"""An intent: ``Intent.RELIABLE``, its value, or its name in any case (``"reliable"``)."""
CloseReasonLike = CloseReason | int | str
"""A close reason: ``CloseReason.NORMAL``, its value, or its name in any case (``"normal"``)."""


def as_intent(value: IntentLike) -> Intent:
    """``value`` as an :class:`Intent`; raises :class:`InvalidArgumentError` saying what to pass."""
    if type(value) is Intent:
        return value
    return _as_enum(Intent, value, "intent")


def as_close_reason(value: CloseReasonLike) -> CloseReason:
    """``value`` as a :class:`CloseReason` (see :func:`as_intent`)."""
    if type(value) is CloseReason:
        return value
    return _as_enum(CloseReason, value, "close reason")


def _as_enum(kind: type[_E], value: object, what: str) -> _E:
    try:
        if isinstance(value, str):
            return kind[value.strip().upper()]
        if isinstance(value, int) and not isinstance(value, bool):
            return kind(value)
    except (KeyError, ValueError):
        pass
    names = ", ".join(f"{kind.__name__}.{m.name}" for m in kind)
    lower = ", ".join(repr(m.name.lower()) for m in kind)
    raise InvalidArgumentError(f"{what} must be one of {names} (or the names {lower}), "
                               f"got {value!r}")


def check_batch_size(value: object) -> int:
    """``value`` as the size limit of a batch, else :class:`InvalidArgumentError`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"max is the most messages a batch may hold, an integer "
                                   f">= 1, got {value!r}")
    return int(value)
