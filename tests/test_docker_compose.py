"""docker-compose.yml is checked statically (Docker's engine does not run here), except its
namespace script, which runs against the real Temporal dev server."""

import asyncio
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from billing.settings import Settings
from local_stack.temporal import search_attribute_args, temporal_cli_path

ROOT = Path(__file__).resolve().parent.parent
# Read by temporalio.envconfig, not by Settings.
TEMPORAL_VARIABLES = {"TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY"}
BILLING_SERVICES = ("worker", "starter", "codec-server", "webhooks")
PINNED_TAG = re.compile(r"^[^:@]+:v?\d+(\.\d+)+$")


def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def services() -> dict[str, Any]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def condition(service: str, dependency: str) -> str | None:
    depends_on = services()[service].get("depends_on", {})
    if isinstance(depends_on, list):
        return "service_started" if dependency in depends_on else None
    entry = depends_on.get(dependency)
    return None if entry is None else str(entry["condition"])


def test_the_stack_has_every_part() -> None:
    assert {
        "postgres",
        "temporal-schema",
        "temporal",
        "temporal-namespace",
        "temporal-ui",
        "worker",
        "stripe-sandbox",
        "codec-server",
        "webhooks",
        "starter",
        "prometheus",
        "grafana",
    } <= set(services())
    assert services()["stripe-sandbox"]["network_mode"] == "service:worker"


def test_every_image_is_pinned_to_a_version() -> None:
    for name, service in services().items():
        assert "image" in service or "build" in service, name
        if "image" in service:
            assert PINNED_TAG.match(service["image"]), (name, service["image"])


def test_temporal_images_are_the_current_setup() -> None:
    images = {name: service.get("image", "") for name, service in services().items()}
    assert not any("auto-setup" in image for image in images.values())
    assert images["temporal"].startswith("temporalio/server:")
    assert images["temporal-schema"].startswith("temporalio/admin-tools:")
    assert images["temporal-namespace"].startswith("temporalio/admin-tools:")
    server_version = images["temporal"].split(":")[1]
    assert images["temporal-schema"].endswith(f":{server_version}")


def test_start_order_is_held_by_depends_on_conditions() -> None:
    assert condition("temporal-schema", "postgres") == "service_healthy"
    assert condition("temporal", "temporal-schema") == "service_completed_successfully"
    assert condition("temporal-namespace", "temporal") == "service_healthy"
    assert condition("temporal-ui", "temporal") == "service_healthy"
    assert condition("worker", "temporal-namespace") == "service_completed_successfully"
    assert condition("worker", "postgres") == "service_healthy"
    for service in ("temporal", "postgres"):
        assert "healthcheck" in services()[service], service


def test_search_attributes_match_the_code() -> None:
    declared = services()["temporal-namespace"]["environment"]["SEARCH_ATTRIBUTES"].split()
    assert sorted(declared) == sorted(search_attribute_args()[1::2])


def test_billing_environment_names_real_settings() -> None:
    settings_variables = {name.upper() for name in Settings.model_fields}
    known = settings_variables | TEMPORAL_VARIABLES
    for name in BILLING_SERVICES:
        environment = set(services()[name]["environment"])
        assert environment <= known, (name, environment - known)


def test_worker_metrics_and_codec_server_listen_for_other_containers() -> None:
    worker = services()["worker"]["environment"]
    assert (worker["METRICS_HOST"], worker["METRICS_PORT"]) == ("0.0.0.0", "9464")
    codec = services()["codec-server"]
    assert codec["command"] == ["python", "-m", "billing.codec_server"]
    assert codec["environment"]["CODEC_SERVER_HOST"] == "0.0.0.0"
    port = codec["environment"]["CODEC_SERVER_PORT"]
    assert f"127.0.0.1:{port}:{port}" in codec["ports"]
    ui = services()["temporal-ui"]["environment"]
    assert ui["TEMPORAL_CODEC_ENDPOINT"] == f"http://127.0.0.1:{port}"


def test_the_webhook_receiver_is_reached_by_the_sandbox_and_the_host() -> None:
    """The sandbox delivers only to 127.0.0.1, so the receiver shares the worker's (and the
    sandbox's) network namespace, listens on every interface of it, and is published there."""
    webhooks = services()["webhooks"]
    assert webhooks["command"] == ["python", "-m", "billing.webhooks"]
    assert webhooks["network_mode"] == "service:worker"
    assert webhooks["profiles"] == ["webhooks"]
    environment = webhooks["environment"]
    assert environment["WEBHOOK_HOST"] == "0.0.0.0"
    assert "STRIPE_WEBHOOK_SECRET" in environment
    port = environment["WEBHOOK_PORT"]
    assert f"127.0.0.1:{port}:{port}" in services()["worker"]["ports"]


def test_published_ports_bind_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_observability_is_behind_its_profile_and_provisioned() -> None:
    for name in ("prometheus", "grafana"):
        assert services()[name]["profiles"] == ["observability"], name
    mounts = dict(volume.split(":")[:2] for volume in services()["grafana"]["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = ROOT / "deploy/grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    prometheus_port = services()["prometheus"]["ports"][0].split(":")[-1]
    assert datasource["datasources"][0]["url"] == f"http://prometheus:{prometheus_port}"
    provider = yaml.safe_load((provisioning / "dashboards/billing.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == mounts["./deploy/grafana/dashboards"]


def test_mounted_files_exist() -> None:
    """Every host path a service mounts exists."""
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)


async def test_namespace_script_creates_the_namespace_and_search_attributes(
    temporal_env: WorkflowEnvironment,
) -> None:
    """deploy/temporal/create-namespace.sh with the `temporal` CLI (as in admin-tools) against
    the dev server, twice: the second run finds everything in place."""
    namespace = f"compose-{uuid.uuid4().hex[:8]}"
    environment = {
        **os.environ,
        "PATH": f"{Path(temporal_cli_path()).parent}{os.pathsep}{os.environ['PATH']}",
        "TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "NAMESPACE": namespace,
        "SEARCH_ATTRIBUTES": services()["temporal-namespace"]["environment"]["SEARCH_ATTRIBUTES"],
    }
    script = ROOT / "deploy/temporal/create-namespace.sh"
    for run in (1, 2):
        result = await asyncio.to_thread(
            subprocess.run,
            ["sh", str(script)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (run, result.stdout, result.stderr)
    assert result.stdout.count("exists") == len(environment["SEARCH_ATTRIBUTES"].split())
    listed = await temporal_env.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    custom = {
        name: IndexedValueType.Name(value) for name, value in listed.custom_attributes.items()
    }
    assert custom == {
        "BillingPeriod": "INDEXED_VALUE_TYPE_KEYWORD",
        "CustomerId": "INDEXED_VALUE_TYPE_KEYWORD",
        "PaymentStatus": "INDEXED_VALUE_TYPE_KEYWORD",
    }


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed"
)
@pytest.mark.parametrize("profile", ["cli", "observability"])
def test_docker_compose_accepts_the_file(profile: str) -> None:
    base = ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", profile]
    environment = {**os.environ, "BILLING_CODEC_KEYS": "k1:" + "A" * 43 + "="}
    result = subprocess.run(
        [*base, "config", "-q"], capture_output=True, text=True, timeout=60, env=environment
    )
    assert result.returncode == 0, result.stderr
    without_key = {
        name: value for name, value in environment.items() if name != "BILLING_CODEC_KEYS"
    }
    refused = subprocess.run(
        [*base, "--project-directory", str(ROOT / "deploy"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=without_key,
    )
    assert refused.returncode != 0
    assert "put BILLING_CODEC_KEYS in .env" in refused.stderr
