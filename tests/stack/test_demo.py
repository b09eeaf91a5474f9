"""`make demo` as the README's quick start runs it, on a stack of its own, with a deadline."""

import subprocess
import time
from pathlib import Path

from local_stack.ports import free_port
from tests.stack.test_stack_cli import stack, stack_env
from tests.support import ROOT

# The demo itself waits at most DEMO_WAIT (40 s) for the payments; seeding and billing 50
# customers take seconds. The deadline leaves room for a slow, shared machine.
DEADLINE_S = 150


def test_make_demo_returns_with_the_report(scratch_dir: Path) -> None:
    ports = {
        "embedded_postgres_port": free_port(),
        "embedded_temporal_port": free_port(),
        "embedded_temporal_ui_port": free_port(),
        "sandbox_port": free_port(),
    }
    env = stack_env(scratch_dir / "data", ports)
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stdout + up.stderr
        started = time.monotonic()
        demo = subprocess.run(
            ["make", "-s", "demo"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=False,
        )
        took = time.monotonic() - started
    finally:
        stack("down", env)
    output = demo.stdout
    assert demo.returncode == 0, output + demo.stderr
    print(f"{output}\nmake demo returned in {took:.1f} s once the stack was up")
    assert "seeded 50 demo customers" in output
    assert "demo dunning schedule" in output
    assert "report" in output and "succeeded" in output
    assert "payments failed with insufficient_funds" in output  # after its dunning retries
    assert "payments failed with generic_decline" in output  # a hard decline, at once
    assert f"http://127.0.0.1:{ports['embedded_temporal_ui_port']}/namespaces/" in output
