"""Read customers from CSV: every row is checked before anything is written."""

import csv
from pathlib import Path

from pydantic import ValidationError

from billing.models import NewCustomer

REQUIRED_COLUMNS = (
    "email",
    "stripe_customer_id",
    "payment_method_id",
    "monthly_amount",
    "currency",
)
TRUE_WORDS = {"true", "1", "yes", "y"}
FALSE_WORDS = {"false", "0", "no", "n"}


class InvalidCsv(ValueError):
    pass


def read_customers(path: Path) -> list[NewCustomer]:
    """Parse and validate the whole file; raise InvalidCsv naming the first bad line."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise InvalidCsv(
                    f"{path}: missing column(s) {', '.join(missing)}; the header must name "
                    f"{', '.join(REQUIRED_COLUMNS)} (and optionally active)"
                )
            return _rows(path, reader)
    except OSError as err:
        raise InvalidCsv(f"cannot read {path}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise InvalidCsv(f"{path} is not UTF-8 text") from err


def _rows(path: Path, reader: "csv.DictReader[str]") -> list[NewCustomer]:
    customers: list[NewCustomer] = []
    seen: dict[str, tuple[int, str]] = {}
    for row in reader:
        line = reader.line_num
        if None in row or any(row.get(c) is None for c in REQUIRED_COLUMNS):
            raise InvalidCsv(f"{path} line {line}: wrong number of fields")
        fields = {c: (row[c] or "").strip() for c in REQUIRED_COLUMNS}
        active_text = (row.get("active") or "true").strip().lower()
        if active_text not in TRUE_WORDS | FALSE_WORDS:
            raise InvalidCsv(
                f"{path} line {line}: active must be true or false, not {active_text!r}"
            )
        try:
            customer = NewCustomer.model_validate(
                {
                    **fields,
                    "currency": fields["currency"].lower(),
                    "active": active_text in TRUE_WORDS,
                }
            )
        except ValidationError as err:
            problem = err.errors()[0]
            column = ".".join(str(part) for part in problem["loc"])
            raise InvalidCsv(f"{path} line {line}: {column}: {problem['msg']}") from err
        _refuse_repeat(path, line, customer, seen)
        customers.append(customer)
    if not customers:
        raise InvalidCsv(f"{path} has no customer rows")
    return customers


def _refuse_repeat(
    path: Path, line: int, customer: NewCustomer, seen: dict[str, tuple[int, str]]
) -> None:
    """One row per customer: a customer is its Stripe customer id, and emails compare
    ignoring case. A repeat of either names both lines."""
    for key, shown in (
        (customer.stripe_customer_id, customer.stripe_customer_id),
        (customer.email.lower(), customer.email),
    ):
        first, first_shown = seen.setdefault(key, (line, shown))
        if first != line:
            case = "" if first_shown == shown else f" as {first_shown} (case does not count)"
            raise InvalidCsv(
                f"{path} line {line}: {shown} is already on line {first}{case}; "
                "keep one row per customer"
            )
