"""Structured outputs through a served SmolLM2 with the openai client (slow): the reduced run of
tests/structured/check_served.py (a few schemas at temperature 0 and 0.8; regex, choice, lark grammar and
json_object on chat and completions; free greedy requests beside structured ones keep their text) exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("jsonschema")
pytest.importorskip("lark")
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parent / "structured" / "check_served.py"


def test_the_reduced_served_check_passes():
    done = subprocess.run([sys.executable, str(SCRIPT), "--reduced", "--concurrency", "8"], capture_output=True,
                          text=True, timeout=1200)
    print(done.stdout[-6000:])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
