"""`python -m local_stack up|status|down`, as `make up` and `make down` run it."""

import os
import subprocess
import sys
from pathlib import Path

from local_stack.ports import free_port, port_accepts

SERVICES = ("postgres", "temporal", "stripe-sandbox", "worker")
# On the embedded sandbox `up` also runs the webhook receiver, with an endpoint it registers.
EMBEDDED_SERVICES = (*SERVICES, "webhooks")
SERVICE_VARIABLES = (
    "DATABASE_URL",
    "TEMPORAL_ADDRESS",
    "STRIPE_API_KEY",
    "STRIPE_API_BASE",
    "STRIPE_WEBHOOK_SECRET",
)


def stack_ports(*extra: str) -> dict[str, int]:
    """Free ports for a scratch stack's services, the webhook receiver's and `extra` ones."""
    names = (
        "embedded_postgres_port",
        "embedded_temporal_port",
        "embedded_temporal_ui_port",
        "sandbox_port",
        "webhook_port",
        *extra,
    )
    return {name: free_port() for name in names}


def stack_env(data_dir: Path, ports: dict[str, int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    env["DATA_DIR"] = str(data_dir)
    env["METRICS_PORT"] = "0"  # 9464 may be another stack's
    env.update({name.upper(): str(port) for name, port in ports.items()})
    return env


def stack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "local_stack", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def states(output: str) -> dict[str, str]:
    return {line.split()[0]: line.split()[1] for line in output.splitlines() if line.strip()}


def test_up_status_down(scratch_dir: Path) -> None:
    ports = stack_ports()
    data_dir = scratch_dir / "data"
    env = stack_env(data_dir, ports)
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{ports['embedded_temporal_ui_port']}" in up.stdout
        assert f"127.0.0.1:{ports['embedded_postgres_port']}/billing" in up.stdout

        status = stack("status", env)
        assert states(status.stdout) == dict.fromkeys(EMBEDDED_SERVICES, "running"), status.stdout
        for name in ("temporal", "stripe-sandbox", "worker", "webhooks"):
            assert (data_dir / "pids" / f"{name}.pid").exists()
            assert (data_dir / "logs" / f"{name}.log").exists()
        assert (data_dir / "postgres" / "pgdata" / "postmaster.pid").exists()

        again = stack("up", env)
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        down = stack("down", env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert states(stack("status", env).stdout) == dict.fromkeys(EMBEDDED_SERVICES, "stopped")
    assert not list((data_dir / "pids").iterdir())
    assert not any(port_accepts(port) for port in ports.values())
    assert stack("down", env).returncode == 0


def test_status_marks_configured_services_external(scratch_dir: Path) -> None:
    env = stack_env(scratch_dir, {})
    env["DATABASE_URL"] = "postgresql://elsewhere/billing"
    env["TEMPORAL_ADDRESS"] = "temporal.example:7233"
    env["STRIPE_API_KEY"] = "sk_test_elsewhere"
    status = stack("status", env)
    assert status.returncode == 0, status.stderr
    assert states(status.stdout) == {
        "postgres": "external",
        "temporal": "external",
        "stripe-sandbox": "external",
        "worker": "stopped",
    }
    assert "sk_test_elsewhere" not in status.stdout


def test_up_reports_a_worker_that_dies_with_its_log(scratch_dir: Path) -> None:
    env = stack_env(scratch_dir, {})
    env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{free_port()}/billing"
    env["TEMPORAL_ADDRESS"] = f"127.0.0.1:{free_port()}"
    env["STRIPE_API_KEY"] = "sk_test_elsewhere"
    try:
        up = stack("up", env)
    finally:
        stack("down", env)
    assert up.returncode == 1
    assert "the worker exited during start" in up.stderr
    assert "worker.log ends with" in up.stderr
