"""The soak run of docs/reliability.md, as an opt-in test: ``pytest -m soak``.

It runs ``tools/soak.py`` (100 peers through the fault proxy; 10 minutes, or
``$INTENTRA_SOAK_DURATION`` such as ``2m``) in a subprocess and fails unless
every check of the script held: RELIABLE exactly once and in order, REALTIME
never twice, no RSS growth after warm-up. The default run deselects it
(``addopts`` in pyproject.toml); the last test here checks that it does, and that
``-m soak`` really selects it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _seconds(text: str) -> float:
    if text.endswith("m") and not text.endswith("ms"):
        return float(text[:-1]) * 60
    return float(text.removesuffix("s"))


@pytest.mark.soak
def test_soak_through_the_fault_proxy(tmp_path: Path) -> None:
    duration = os.environ.get("INTENTRA_SOAK_DURATION", "10m")
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "soak.py"), "--duration", duration,
         "--json", str(out)], cwd=ROOT, capture_output=True, text=True, check=False,
        timeout=_seconds(duration) + 300)
    assert out.exists(), result.stderr
    report = json.loads(out.read_text())
    assert report["errors"]["reliable_order"] == 0, report
    assert report["errors"]["realtime_duplicate"] == 0, report
    assert report["reliable"]["sent"] > 0 and report["realtime"]["sent"] > 0, report
    assert result.returncode == 0, (report, result.stderr)


def _collected(*marker: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *marker, str(Path(__file__))], cwd=ROOT, capture_output=True, text=True,
        check=False, timeout=60)
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_the_soak_marker_selects_the_soak_run_and_the_default_run_does_not() -> None:
    assert _collected("-m", "soak") == ["tests/test_soak.py::test_soak_through_the_fault_proxy"]
    assert "tests/test_soak.py::test_soak_through_the_fault_proxy" not in _collected()
