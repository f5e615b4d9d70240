#!/usr/bin/env bash
# Opt-in: coverage-guided fuzzing of intentra._native under AddressSanitizer (docs/native.md).
#
#   fuzz/native.sh [SECONDS]      # default 600; corpus in fuzz/corpus-native (kept, small)
#
# Builds the extension with clang (-fsanitize=address,fuzzer-no-link) in a copy of
# src/, so the installed build is untouched, and runs fuzz/fuzz_native.py with
# atheris' libFuzzer and ASan runtime preloaded. Needs clang (Debian: apt-get
# install clang) and atheris (installed into .venv here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_SECONDS=${1:-600}
PY=${PY:-.venv/bin/python}
command -v clang >/dev/null || { echo "fuzz/native.sh needs clang (Debian: apt-get install clang)" >&2; exit 2; }
"$PY" -c "import atheris" 2>/dev/null || "$PY" -m pip install --quiet atheris
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
cp -r src "$BUILD/src"
rm -f "$BUILD"/src/intentra/_native*.so
cp setup.py "$BUILD/"  # alone: build_ext needs no project metadata
(cd "$BUILD" && CC=clang LDSHARED="clang -shared" INTENTRA_NATIVE_BUILD=require \
  INTENTRA_NATIVE_CFLAGS="-fsanitize=address,fuzzer-no-link -g -O1 -fno-omit-frame-pointer" \
  "$OLDPWD/$PY" setup.py -q build_ext --build-lib out --build-temp tmp \
  && cp out/intentra/_native*.so src/intentra/)
ATHERIS=$("$PY" -c "import atheris; print(atheris.path())")
mkdir -p fuzz/corpus-native
# Python itself is not instrumented and keeps memory until exit: no leak report.
LD_PRELOAD="$ATHERIS/asan_with_fuzzer.so" \
  ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1 \
  PYTHONPATH="$BUILD/src" "$PY" fuzz/fuzz_native.py -max_total_time="$RUN_SECONDS" \
  -rss_limit_mb=4096 -max_len=4096 fuzz/corpus-native
