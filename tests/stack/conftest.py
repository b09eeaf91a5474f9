"""Fixtures for the embedded-stack tests: scratch folders outside the repository's `.data/`."""

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A fresh folder under /tmp, removed afterwards (EmbeddedPostgres opens it to its user)."""
    path = Path(tempfile.mkdtemp(prefix="billing-stack-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
