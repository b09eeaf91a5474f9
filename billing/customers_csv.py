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
    seen: dict[str, int] = {}
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
        if customer.email in seen:
            first = seen[customer.email]
            raise InvalidCsv(f"{path} line {line}: {customer.email} is already on line {first}")
        seen[customer.email] = line
        customers.append(customer)
    if not customers:
        raise InvalidCsv(f"{path} has no customer rows")
    return customers
