"""LOG_LEVEL, LOG_FORMAT and OTEL_EXPORTER_OTLP_ENDPOINT with a bad value stop the worker and
the starter at start, with one line naming the variable and what to use."""

import os
import subprocess
import sys

import pytest

from tests.support import ROOT


@pytest.mark.parametrize("program", ["worker.py", "starter.py"])
@pytest.mark.parametrize(
    ("variable", "value", "hint"),
    [
        ("LOG_LEVEL", "loud", "use one of DEBUG, INFO"),
        ("LOG_FORMAT", "xml", "'text' or 'json'"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318", "e.g. http://127.0.0.1:4318"),
    ],
)
def test_a_bad_value_is_one_line_at_start(
    program: str, variable: str, value: str, hint: str
) -> None:
    argv = [sys.executable, program] + (["report", "2026-11"] if program == "starter.py" else [])
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: {variable}: ")
    assert hint in line
