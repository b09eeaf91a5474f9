"""The embedded stack: real PostgreSQL and Temporal from wheels, plus background processes.

See `python -m local_stack --help`; tests use the classes directly.
"""

from local_stack.postgres import EmbeddedPostgres, PostgresError
from local_stack.processes import BackgroundProcess
from local_stack.temporal import (
    EmbeddedTemporal,
    TemporalError,
    dev_server_args,
    start_local_environment,
    temporal_cli_path,
    test_server_path,
)

__all__ = [
    "BackgroundProcess",
    "EmbeddedPostgres",
    "EmbeddedTemporal",
    "PostgresError",
    "TemporalError",
    "dev_server_args",
    "start_local_environment",
    "temporal_cli_path",
    "test_server_path",
]
