"""`python -m local_stack up|down|status`: the embedded stack behind `make up` and `make down`."""

import argparse
import sys

from billing.settings import Settings
from local_stack.postgres import PostgresError
from local_stack.services import EmbeddedStack, StackError
from local_stack.temporal import TemporalError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m local_stack",
        description="Run PostgreSQL, Temporal, the Stripe sandbox and a worker in the background.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start what is not running yet and wait until it is ready")
    commands.add_parser("down", help="stop the worker, then the services; fine if none runs")
    commands.add_parser("status", help="one line per service")
    args = parser.parse_args(argv)

    stack = EmbeddedStack(Settings())
    try:
        if args.command == "up":
            stack.up()
        elif args.command == "down":
            stack.down()
        else:
            for state in stack.status():
                print(state.line())
    except (StackError, PostgresError, TemporalError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
