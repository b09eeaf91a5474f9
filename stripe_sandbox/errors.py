"""Stripe's error envelope, raised by operations and rendered by the server."""

from __future__ import annotations

from typing import Any

_DOC_BASE = "https://stripe.com/docs/error-codes/"


class StripeError(Exception):
    """An API error with Stripe's HTTP status and `error` hash.

    `stored` says whether the idempotency layer keeps this answer: Stripe saves a result
    only once the endpoint has begun executing, never for a request rejected by validation.
    """

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        decline_code: str | None = None,
        extra: dict[str, Any] | None = None,
        stored: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.param = param
        self.decline_code = decline_code
        self.extra = extra or {}
        self.stored = stored

    def error_hash(self) -> dict[str, Any]:
        error: dict[str, Any] = {}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = _DOC_BASE + self.code.replace("_", "-")
        if self.decline_code is not None:
            error["decline_code"] = self.decline_code
        error["message"] = self.message
        if self.param is not None:
            error["param"] = self.param
        error.update(self.extra)
        error["type"] = self.type
        return error

    def body(self) -> dict[str, Any]:
        return {"error": self.error_hash()}


def invalid_request(
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    status: int = 400,
    stored: bool = False,
) -> StripeError:
    return StripeError(
        status, "invalid_request_error", message, param=param, code=code, stored=stored
    )


def parameter_missing(param: str) -> StripeError:
    return invalid_request(
        f"Missing required param: {param}.", param=param, code="parameter_missing"
    )


def parameter_invalid(param: str, message: str) -> StripeError:
    return invalid_request(message, param=param, code="parameter_invalid_string")


def resource_missing(kind: str, object_id: str, param: str, status: int = 404) -> StripeError:
    return invalid_request(
        f"No such {kind}: '{object_id}'", param=param, code="resource_missing", status=status
    )


def api_error() -> StripeError:
    return StripeError(
        500,
        "api_error",
        "An unknown error occurred. The sandbox injected this fault on purpose.",
    )
