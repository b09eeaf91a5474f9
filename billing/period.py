"""Billing periods are calendar months written YYYY-MM."""

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

PERIOD_PATTERN = re.compile(r"^(\d{4})-(\d{2})$")


class InvalidPeriod(ValueError):
    pass


def parse_period(text: str) -> str:
    match = PERIOD_PATTERN.match(text)
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 2000:
        raise InvalidPeriod(f"invalid billing period {text!r}: expected YYYY-MM, e.g. 2026-11")
    return text


def current_period(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m")


def period_start(period: str) -> datetime:
    """Midnight UTC on the first day of the period."""
    year, month = (int(part) for part in period.split("-"))
    return datetime(year, month, 1, tzinfo=UTC)


def billed_period(at: datetime, time_zone: str, in_arrears: bool) -> str:
    """The period a run fired at `at` bills: the month before (in arrears) or the month of
    `at`, as a clock in `time_zone` reads it."""
    local = at.astimezone(ZoneInfo(time_zone))
    if in_arrears:
        local = local.replace(day=1) - timedelta(days=1)
    return local.strftime("%Y-%m")
