"""`python -m local_stack up` with BILLING_CODEC_KEYS: the codec server runs beside the stack,
and the dev server's Web UI is told to decode through it."""

import json
import urllib.request
from pathlib import Path

from billing.codec import new_key_entry
from local_stack.ports import port_accepts
from tests.stack.test_stack_cli import EMBEDDED_SERVICES, stack, stack_env, stack_ports, states


def test_up_with_keys_runs_the_codec_server_for_the_web_ui(scratch_dir: Path) -> None:
    ports = stack_ports("codec_server_port")
    env = stack_env(scratch_dir / "data", ports)
    env["BILLING_CODEC_KEYS"] = new_key_entry("k1")
    codec_url = f"http://127.0.0.1:{ports['codec_server_port']}"
    ui_origin = f"http://127.0.0.1:{ports['embedded_temporal_ui_port']}"
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"codec server {codec_url}" in up.stdout
        assert states(stack("status", env).stdout) == dict.fromkeys(
            (*EMBEDDED_SERVICES, "codec-server"), "running"
        )

        with urllib.request.urlopen(f"{ui_origin}/api/v1/settings", timeout=10) as answer:
            ui_settings = json.load(answer)
        assert ui_settings["Codec"]["Endpoint"] == codec_url

        preflight = urllib.request.Request(
            f"{codec_url}/decode",
            method="OPTIONS",
            headers={"Origin": ui_origin, "Access-Control-Request-Method": "POST"},
        )
        with urllib.request.urlopen(preflight, timeout=10) as answer:
            assert answer.headers["Access-Control-Allow-Origin"] == ui_origin
    finally:
        down = stack("down", env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "codec-server    stopped" in down.stdout
    assert not any(port_accepts(port) for port in ports.values())
