"""The README's examples run, so the documentation cannot drift from the code.

Every fenced ``python`` block runs in a fresh interpreter (with port 9000 replaced
by a free one); the shell quick start runs in bash against a real ``intentra
serve``; every subcommand of the command-line synopsis answers ``--help``, and
every option the synopsis shows is one its ``--help`` lists.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
TIMEOUT = 60.0


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README, re.MULTILINE | re.DOTALL)


def free_port() -> int:
    """A UDP port nobody holds now (TCP too: the snippets' ports are for both)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port: int = udp.getsockname()[1]
    return port


def env(tmp_path: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "INTENTRA_KNOWN_HOSTS": str(tmp_path / "known_hosts")}


PYTHON_BLOCKS = blocks("python")


def test_the_readme_has_the_examples_this_file_runs() -> None:
    assert len(PYTHON_BLOCKS) >= 3, "quick start, intentra.sync, envelope"
    assert any("kill %1" in b for b in blocks("sh"))


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_snippet_runs(tmp_path: Path, index: int) -> None:
    code = PYTHON_BLOCKS[index].replace("9000", str(free_port()))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(tmp_path),
                            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    if "asyncio.run(main())" in code and 'b"hello"' in code:  # the quick start: names
        assert "b'hello' RELIABLE 3" in result.stdout, result.stdout
        assert "b'pose 1.0 2.0' REALTIME 0" in result.stdout, result.stdout
        assert "intentra_packets_received_total" in result.stdout


def test_shell_quick_start_runs(tmp_path: Path) -> None:
    script = next(b for b in blocks("sh") if "kill %1" in b)
    script = script.replace("9000", str(free_port()))
    result = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env(tmp_path),
                            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "hello" in lines, result.stdout
    assert any(line.startswith("intentra serving on 127.0.0.1:") for line in lines)
    assert "intentra send: 1 reliable message: 1 sent, 1 acknowledged" in result.stderr


def synopsis() -> dict[str, set[str]]:
    """Subcommand -> the options the README's command-line synopsis shows for it."""
    section = README[README.index("## Command line"):]
    text = next(b for b in blocks("sh") if b in section)
    text = text.replace("\\\n", " ")
    shown: dict[str, set[str]] = {}
    for full in text.splitlines():
        line = full.split("#", 1)[0]
        if m := re.match(r"intentra (--|[a-z]+\b)", line):
            name = "" if m.group(1) == "--" else m.group(1)  # "": options before COMMAND
            shown.setdefault(name, set()).update(re.findall(r"(--[a-z][a-z-]*)", line))
    return shown


def test_every_subcommand_of_the_synopsis_answers_help_with_the_options_shown(
        tmp_path: Path) -> None:
    shown = synopsis()
    assert {"keygen", "pubkey", "serve", "send", "demo", "proxy", "bench", ""} <= set(shown)
    for command, options in shown.items():
        args = [command, "--help"] if command else ["--help"]
        result = subprocess.run([sys.executable, "-m", "intentra", *args], cwd=tmp_path,
                                capture_output=True, text=True, timeout=TIMEOUT, check=False)
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.startswith("usage: intentra"), result.stdout
        missing = {o for o in options if o not in result.stdout}
        assert not missing, f"intentra {command} --help lacks {missing}"
