"""Amounts in minor units, shown in their currency's major units.

Stripe's published lists: https://docs.stripe.com/currencies#zero-decimal and
https://docs.stripe.com/currencies#three-decimal. Every other currency has two decimals.
"""

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
