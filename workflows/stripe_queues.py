"""Routes each Stripe activity to its endpoint's task queue (activities.STRIPE_QUEUES).

A worker interceptor, so that the workflow code is unchanged: every
`workflow.execute_activity_method(StripeActivities.X, ...)` that names no task queue is
scheduled on `stripe_task_queue(<the workflow's task queue>, <X's endpoint class>)`. The name
depends only on the workflow's task queue and the activity type, both fixed in its history,
so the workflow stays deterministic. Replaying a history recorded before the split (its
Stripe activities on the workflow's own queue) still works: the replay compares an
activity's type and id, not its task queue (tests/test_replay.py replays with this
interceptor).

Every worker that runs the payment workflows must install it (worker.py and the benchmark's
worker do); without it the Stripe activities land on the payments queue, where no worker
serves them.
"""

import dataclasses
from typing import Any

from temporalio import workflow
from temporalio.worker import (
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from activities import STRIPE_QUEUE_OF, stripe_task_queue


class StripeQueues(Interceptor):
    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _Inbound


class _Inbound(WorkflowInboundInterceptor):
    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_Outbound(outbound))


class _Outbound(WorkflowOutboundInterceptor):
    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        kind = STRIPE_QUEUE_OF.get(input.activity)
        if kind is not None and input.task_queue is None:
            queue = stripe_task_queue(workflow.info().task_queue, kind)
            input = dataclasses.replace(input, task_queue=queue)
        return super().start_activity(input)
