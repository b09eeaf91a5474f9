"""Amounts in minor units, shown in (and read from) their currency's major units.

Stripe's published lists: https://docs.stripe.com/currencies#zero-decimal and
https://docs.stripe.com/currencies#three-decimal. Every other currency has two decimals.
"""

import re

# fmt: off
ZERO_DECIMAL = frozenset({
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
    "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
})
# fmt: on
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def decimals(currency: str) -> int:
    """How many digits of an amount in minor units follow the decimal point."""
    code = currency.strip().lower()
    return 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2


def format_amount(minor_units: int, currency: str) -> str:
    """`5000, "jpy"` -> `5,000`; `150000, "usd"` -> `1,500.00`; `1500, "kwd"` -> `1.500`."""
    places = decimals(currency)
    sign = "-" if minor_units < 0 else ""
    whole, fraction = divmod(abs(minor_units), 10**places)
    return f"{sign}{whole:,}" + (f".{fraction:0{places}d}" if places else "")


class InvalidAmount(ValueError):
    pass


AMOUNT = re.compile(r"(\d+)(?:\.(\d+))?")


def parse_amount(text: str, currency: str) -> int:
    """`"12.50", "usd"` -> `1250`: an amount above 0 in major units, with at most the
    currency's decimals, to minor units. Raises InvalidAmount."""
    places = decimals(currency)
    match = AMOUNT.fullmatch(text.strip())
    example = "12" if places == 0 else "12." + "5" * places
    if match is None or len(match[2] or "") > places:
        raise InvalidAmount(
            f"invalid amount {text!r}: expected e.g. {example} "
            f"({places} decimals for {currency.strip().upper()})"
        )
    whole, fraction = str(match[1]), str(match[2] or "")
    scale: int = 10**places
    minor = int(whole) * scale + int(fraction.ljust(places, "0") or "0")
    if minor <= 0:
        raise InvalidAmount(f"invalid amount {text!r}: a refund must be above 0")
    return minor
