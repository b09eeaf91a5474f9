"""Measurement-only variants of the payment workflow, applied inside the benchmark's worker
process without touching `workflows/`: they answer "what would this design change buy?".

- `local-all`: the Stripe calls run as local activities too, so a payment's whole happy
  path fits in one workflow task. The ledger writes are local activities already.
- `no-search-attributes`: `upsert_search_attributes` does nothing, to price the upserts per
  payment (the Web UI filters would then not work).
- `eager-start`: the billing run's launch activity asks for eager start when it starts
  payments (`temporal_ops.EAGER_START`), to price it; only with `--launch run`.

They patch `temporalio.workflow`, which the workflow sandbox passes through, so they apply to
every workflow this worker process runs. Never use them outside the benchmark.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow

import temporal_ops

VARIANTS = ("local-all", "no-search-attributes", "eager-start")


def apply(variant: str) -> None:
    if variant == "local-all":

        def local(activity: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs.pop("task_queue", None)
            return workflow.execute_local_activity_method(activity, *args, **kwargs)

        workflow.execute_activity_method = local  # type: ignore[assignment]
    elif variant == "no-search-attributes":

        def ignored(_updates: Any) -> None:
            return None

        workflow.upsert_search_attributes = ignored  # type: ignore[assignment]
    elif variant == "eager-start":
        temporal_ops.EAGER_START = True
    else:
        raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
