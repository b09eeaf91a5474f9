"""Workflows for tests/test_workflow_sandbox.py, in a module of their own: the sandbox
re-imports a workflow's module, and this one imports nothing a workflow may not."""

import random
from datetime import UTC, datetime

from temporalio import workflow


@workflow.defn
class ReadsTheClock:
    @workflow.run
    async def run(self) -> str:
        return datetime.now(UTC).isoformat()


@workflow.defn
class DrawsAtRandom:
    @workflow.run
    async def run(self) -> float:
        return random.random()


@workflow.defn
class ReadsWorkflowTime:
    @workflow.run
    async def run(self) -> str:
        return workflow.now().isoformat()
