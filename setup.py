"""Build of the optional C extension ``intentra._native`` (docs/native.md).

Everything else about the package is in pyproject.toml. The extension links the
system's libcrypto (OpenSSL 3); where no C compiler, Python headers or OpenSSL
headers are found, the build of the extension is skipped with a warning and the
package installs without it: intentra then runs its pure-Python datapath and
says so once (``intentra --version`` names the path in use).

``INTENTRA_NATIVE_BUILD=0`` skips the extension on purpose; ``=require`` makes a
failed build an error (CI on a machine that must have it).
``INTENTRA_NATIVE_CFLAGS`` adds compiler flags (the ASan build of fuzz/native.sh).
"""

from __future__ import annotations

import os
import shlex
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODE = os.environ.get("INTENTRA_NATIVE_BUILD", "auto").strip().lower()
EXTRA = shlex.split(os.environ.get("INTENTRA_NATIVE_CFLAGS", ""))


class OptionalBuildExt(build_ext):
    """A build_ext whose failure leaves the pure-Python package installable."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (setuptools raises several kinds)
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # missing headers, libcrypto, compiler errors
            self._skip(exc)

    def _skip(self, exc: BaseException) -> None:
        if MODE == "require":
            raise exc
        sys.stderr.write(
            "WARNING: intentra's native datapath (C on OpenSSL) was not built: "
            f"{exc}\nintentra will run its pure-Python datapath. Install gcc, the Python "
            "headers and OpenSSL 3 headers (Debian: libssl-dev) and reinstall to build it.\n")


ext_modules = [] if MODE in ("0", "no", "off") else [
    Extension(
        "intentra._native",
        sources=["src/intentra/_native.c"],
        libraries=["crypto"],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                            "-Wno-missing-field-initializers", "-std=gnu11", *EXTRA],
        extra_link_args=[flag for flag in EXTRA if flag.startswith("-fsanitize")],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
