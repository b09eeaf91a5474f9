"""The one logging setup of the worker and the starter: LOG_LEVEL, and LOG_FORMAT text or json.

Lines logged through `workflow.logger` and `activity.logger` carry the workflow id, run id,
activity type and payment id as fields of their own, read from what the Temporal SDK puts on
the record (`temporal_workflow`, `temporal_activity`), instead of a dict appended to the
message.
"""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from temporalio import activity, workflow

from billing.constants import payment_id_of
from billing.settings import Settings

# The fields a record may carry, in the order they are shown.
CONTEXT_FIELDS = ("workflow_id", "run_id", "activity_type", "payment_id")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s%(context)s"


def temporal_context(record: logging.LogRecord) -> dict[str, str]:
    """The workflow and payment a record was logged for; empty outside workflows and
    activities. A payment's workflow id is `payment-<payment id>`."""
    details: dict[str, Any] = {
        **getattr(record, "temporal_workflow", {}),
        **getattr(record, "temporal_activity", {}),
    }
    found = {
        "workflow_id": details.get("workflow_id"),
        "run_id": details.get("run_id") or details.get("workflow_run_id"),
        "activity_type": details.get("activity_type"),
    }
    if isinstance(found["workflow_id"], str):
        found["payment_id"] = payment_id_of(found["workflow_id"])
    return {name: str(value) for name, value in found.items() if value}


class TextFormatter(logging.Formatter):
    """`time level logger message workflow_id=… payment_id=…`; a traceback follows on its
    own lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        context = temporal_context(record)
        record.context = "".join(f" {name}={context[name]}" for name in context)
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the Temporal context present,
    and `exception` holding the traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **temporal_context(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


def log_handler(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing to `stream` (stderr) in LOG_FORMAT."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    return handler


def configure_logging(settings: Settings) -> None:
    """Log to stderr at LOG_LEVEL, as LOG_FORMAT says, replacing any handler set before. The
    Temporal context goes into fields of its own, not onto the message."""
    logging.basicConfig(handlers=[log_handler(settings)], level=settings.log_level, force=True)
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
