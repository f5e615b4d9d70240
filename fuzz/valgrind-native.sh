#!/usr/bin/env bash
# Opt-in: the native datapath's tests under valgrind memcheck (docs/native.md).
#
#   fuzz/valgrind-native.sh [PYTEST ARGS...]
#
# Runs tests/test_native.py and tests/adversarial/test_native_differential.py
# (every entry point of intentra._native, beside the Python reference) with
# PYTHONMALLOC=malloc so that every allocation is valgrind's to check. Fails
# (exit 1) on any invalid read or write, use of uninitialised memory, or
# memory the extension definitely lost. Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (Debian: apt-get install valgrind)" >&2; exit 2; }
PY=${PY:-.venv/bin/python}
"$PY" -c "import intentra._native" || { echo "intentra._native is not built" >&2; exit 2; }
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
set +e
PYTHONMALLOC=malloc valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
  --show-leak-kinds=definite --errors-for-leak-kinds=definite --track-origins=no \
  --num-callers=30 --log-file="$LOG" \
  "$PY" -m pytest -q -p no:cacheprovider -x tests/test_native.py \
  tests/adversarial/test_native_differential.py -k "not version and not compiler" "$@"
status=$?
set -e
# CPython's own start-up and interned objects are never freed, and the module's
# interned attribute names (PyInit__native) live as long as the process: only
# records with a frame of the extension elsewhere count as ours.
"$PY" - "$LOG" <<'PYEOF'
import re, sys
text = open(sys.argv[1]).read()
records = re.split(r"\n==\d+== \n", text)
ours = [r for r in records if "_native.c" in r and "PyInit__native" not in r]
summary = [line for line in text.splitlines() if "ERROR SUMMARY" in line or "definitely lost" in line]
print("\n".join(summary))
if ours:
    print("\n\n".join(ours[:20]))
    print(f"valgrind: {len(ours)} record(s) in intentra._native", file=sys.stderr)
    sys.exit(1)
print("valgrind: no error or definite leak in intentra._native")
PYEOF
echo "(pytest exit $status)"
exit $(( status == 99 ? 0 : status ))  # 99: records outside the extension only
