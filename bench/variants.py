"""Measurement-only variants of the payment workflow, applied inside the benchmark's worker
process without touching `workflows/`: they answer "what would this design change buy?".

- `local-ledger`: the ledger activities (record_authorization, finalize, ...) run as local
  activities, with the same timeouts and retry policies; Stripe calls stay regular activities.
- `no-search-attributes`: `upsert_search_attributes` does nothing, to price the three upserts
  per payment (the Web UI filters would then not work).

They patch `temporalio.workflow`, which the workflow sandbox passes through, so they apply to
every workflow this worker process runs. Never use them outside the benchmark.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from activities.ledger_activities import LedgerActivities

VARIANTS = ("local-ledger", "no-search-attributes")


def _ledger_activity_names() -> set[str]:
    return {
        name
        for name in dir(LedgerActivities)
        if not name.startswith("_") and callable(getattr(LedgerActivities, name))
    }


def apply(variant: str) -> None:
    if variant == "local-ledger":
        names = _ledger_activity_names()
        regular = workflow.execute_activity_method

        def routed(activity: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(activity, "__name__", "") in names:
                kwargs.pop("task_queue", None)
                return workflow.execute_local_activity_method(activity, *args, **kwargs)
            return regular(activity, *args, **kwargs)

        workflow.execute_activity_method = routed  # type: ignore[assignment]
    elif variant == "no-search-attributes":

        def ignored(_updates: Any) -> None:
            return None

        workflow.upsert_search_attributes = ignored  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
