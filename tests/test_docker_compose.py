"""docker-compose.yml is checked statically: Docker's engine does not run here."""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from billing.constants import SEARCH_ATTRIBUTES
from billing.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEMPORAL_VARIABLES = {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY"}


def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def test_the_stack_has_every_part() -> None:
    services = compose()["services"]
    assert {"postgres", "temporal", "temporal-ui", "worker", "stripe-sandbox", "starter"} <= set(
        services
    )
    assert services["stripe-sandbox"]["network_mode"] == "service:worker"


def test_search_attributes_match_the_code() -> None:
    script = " ".join(compose()["services"]["temporal-search-attributes"]["entrypoint"])
    for key in SEARCH_ATTRIBUTES:
        assert key.name in script


def test_billing_environment_names_real_settings() -> None:
    environment = compose()["services"]["worker"]["environment"]
    settings_variables = {name.upper() for name in Settings.model_fields}
    assert set(environment) <= settings_variables | TEMPORAL_VARIABLES


def test_published_ports_bind_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed"
)
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
