"""Which datapath runs: the C extension ``intentra._native`` or the pure-Python core.

Owns: the choice, made once per :class:`~intentra.core.endpoint.Endpoint` when it is
created (``Endpoint(native=None)`` asks :func:`enabled`), the environment variable
``INTENTRA_NATIVE`` (``0`` forces the pure-Python path), and the one warning given
when the extension was not built. Both paths behave identically (docs/native.md):
the choice changes speed, never behaviour.

Never: reads anything but the environment variable and the import of the module.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Final

ENV_VAR: Final = "INTENTRA_NATIVE"

_module: ModuleType | None
_import_error: str
try:
    _module, _import_error = importlib.import_module("intentra._native"), ""
except ImportError as exc:  # not built: no compiler or no OpenSSL headers at install
    _module, _import_error = None, str(exc)

_warned = False


def available() -> bool:
    """Whether the C extension was built and imports."""
    return _module is not None


def requested() -> bool:
    """False when ``INTENTRA_NATIVE`` is ``0`` (or ``false``, ``no``, ``off``)."""
    return os.environ.get(ENV_VAR, "").strip().lower() not in ("0", "false", "no", "off")


def enabled() -> bool:
    """Whether a new Endpoint uses the native datapath (built, and not turned off).

    When it was requested but not built, logs a warning once per process.
    """
    global _warned
    if not requested():
        return False
    if _module is None:
        if not _warned:
            _warned = True
            logging.getLogger("intentra").warning(
                "intentra: the native datapath is not built (%s); running the pure-Python "
                "datapath. Reinstall with gcc and OpenSSL 3 headers (libssl-dev) to build "
                "it, or set %s=0 to silence this.", _import_error, ENV_VAR)
        return False
    return True


def module() -> ModuleType:
    """The extension module.

    Raises:
        RuntimeError: it was not built (check :func:`available` first).
    """
    if _module is None:
        raise RuntimeError(f"intentra._native is not built ({_import_error}); "
                           f"reinstall with gcc and libssl-dev, or set {ENV_VAR}=0")
    return _module


def describe(native: bool | None = None) -> str:
    """One line naming the path in use (``native`` the path an Endpoint chose, or the default).

    For example ``"native (C, OpenSSL 3.0.19 27 Jan 2026)"`` or
    ``"python (INTENTRA_NATIVE=0)"``.
    """
    if native is None:
        native = _module is not None and requested()
    if native and _module is not None:
        return f"native (C, {_module.OPENSSL_VERSION})"
    if not requested():
        return f"python ({ENV_VAR}=0)"
    if _module is None:
        return "python (the native module is not built)"
    return "python"


__all__ = ["ENV_VAR", "available", "describe", "enabled", "module", "requested"]
