"""Fixtures for the embedded-stack tests: scratch folders outside the repository's `.data/`."""

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def _scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="billing-stack-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A fresh folder under /tmp, removed afterwards (EmbeddedPostgres opens it to its user)."""
    with _scratch() as path:
        yield path


@pytest.fixture(scope="module")
def module_scratch_dir() -> Iterator[Path]:
    """Like `scratch_dir`, shared by one test module."""
    with _scratch() as path:
        yield path
