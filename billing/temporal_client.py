"""The one way to connect to Temporal (its own environment variables, our data converter),
and what the CLI reads from a closed run's history."""

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile

from billing.settings import Settings


async def connect_temporal(settings: Settings) -> Client:
    """TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY and TLS come from envconfig;
    without an address, the embedded dev server serves."""
    config = ClientConfigProfile.load().to_client_connect_config()
    config.setdefault("target_host", settings.embedded_temporal_address())
    return await Client.connect(**config, data_converter=pydantic_data_converter)


CANCEL_SIGNAL = "cancel"
CANCEL_UPDATE = "cancel_payment"


async def cancel_was_requested(handle: WorkflowHandle[object, object]) -> bool:
    """Whether the run `handle` names was asked to cancel, by any route: the `cancel` signal,
    the `cancel_payment` update, or a Temporal cancellation request (the Web UI). A run that
    resumes a stranded payment must honour what the closed run was asked."""
    async for event in handle.fetch_history_events():
        signaled = event.workflow_execution_signaled_event_attributes.signal_name
        accepted = event.workflow_execution_update_accepted_event_attributes
        match event.event_type:
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED:
                return True
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED if signaled == CANCEL_SIGNAL:
                return True
            case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED if (
                accepted.accepted_request.input.name == CANCEL_UPDATE
            ):
                return True
    return False
