"""The one way to connect to Temporal: its own environment variables, our data converter."""

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile

from billing.settings import Settings


async def connect_temporal(settings: Settings) -> Client:
    """TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY and TLS come from envconfig;
    without an address, the embedded dev server serves."""
    config = ClientConfigProfile.load().to_client_connect_config()
    config.setdefault("target_host", settings.embedded_temporal_address())
    return await Client.connect(**config, data_converter=pydantic_data_converter)
