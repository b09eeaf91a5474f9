"""Durations as operators write them: `90s`, `15m`, `2h`, `3d`, `1d12h`, `0`."""

import re
from datetime import timedelta

from billing.constants import SHORTEST_AUTHORIZATION_LIFETIME

UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
PART = re.compile(r"(\d+)([dhms])")
WHOLE = re.compile(r"^(\d+[dhms])+$")


class InvalidDuration(ValueError):
    pass


def parse_duration(text: str) -> timedelta:
    compact = text.strip().lower().replace(" ", "")
    if compact == "0":
        return timedelta(0)
    if not WHOLE.match(compact):
        raise InvalidDuration(f"invalid duration {text!r}: write it like 90s, 15m, 2h, 3d or 1d12h")
    return timedelta(seconds=sum(int(n) * UNIT_SECONDS[u] for n, u in PART.findall(compact)))


def format_duration(delay: timedelta) -> str:
    seconds = int(delay.total_seconds())
    parts = []
    for unit, size in UNIT_SECONDS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0"


def check_capture_delay(delay: timedelta) -> timedelta:
    """A capture window must end before the shortest authorization lifetime."""
    if delay < timedelta(0):
        raise InvalidDuration("the capture delay cannot be negative")
    if delay >= SHORTEST_AUTHORIZATION_LIFETIME:
        raise InvalidDuration(
            f"capture delay {format_duration(delay)} would reach the authorization's lifetime: "
            f"Stripe voids uncaptured authorizations after 7 days, and after about "
            f"{format_duration(SHORTEST_AUTHORIZATION_LIFETIME)} for Visa merchant-initiated "
            f"charges; use less than {format_duration(SHORTEST_AUTHORIZATION_LIFETIME)}"
        )
    return delay


def check_dunning_schedule(schedule: list[timedelta]) -> list[timedelta]:
    """Retry times after the first soft decline: positive and strictly increasing."""
    previous = timedelta(0)
    for delay in schedule:
        if delay <= previous:
            raise InvalidDuration(
                "the dunning schedule must be positive and increasing, e.g. 1d,3d,5d"
            )
        previous = delay
    return schedule
