"""Configuration, read once from the environment."""

import ipaddress
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from billing.codec import CodecKey, parse_codec_keys
from billing.constants import TASK_QUEUE
from billing.durations import check_capture_delay, check_dunning_schedule, parse_duration
from billing.models import BillingPolicy

SANDBOX_API_KEY = "sk_test_sandbox"
WEBHOOK_PATH = "/stripe/webhooks"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    """Unset service variables fall back to the embedded stack that `make up` runs."""

    # An error never echoes the value: it may be a secret (a Stripe key, a codec key).
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", hide_input_in_errors=True)

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset means the embedded server."
    )
    stripe_api_key: SecretStr | None = Field(
        default=None, description="Stripe secret key; unset means the local sandbox."
    )
    stripe_api_base: str | None = Field(
        default=None, description="Stripe API base URL; unset means Stripe, or the sandbox."
    )
    stripe_max_network_retries: int = Field(
        default=0,
        description="SDK-level retries; 0 because Temporal retries the whole activity.",
    )
    capture_delay: timedelta = Field(
        default=timedelta(0),
        description="Wait between authorization and capture, e.g. 2h; the default for `bill`.",
    )
    dunning_schedule: Annotated[list[timedelta], NoDecode] = Field(
        default=[timedelta(days=1), timedelta(days=3), timedelta(days=5)],
        description="Retry times after the first soft decline, e.g. 1d,3d,5d; empty for none.",
    )
    reauthorize_expired: bool = Field(
        default=True,
        description="Re-authorize once when an authorization expired before capture.",
    )
    authentication_window: timedelta = Field(
        default=timedelta(days=3),
        description="How long a payment waits for the customer to pass 3-D Secure, e.g. 3d; "
        "0: `authentication_required` is a final decline.",
    )
    authentication_return_url: str | None = Field(
        default=None,
        description="Where Stripe sends the customer after 3-D Secure (http or https).",
    )
    launch_rate: float | None = Field(
        default=None,
        gt=0,
        description="Payments a billing run starts per second; unset: STRIPE_CREATE_PER_SECOND.",
    )
    run_poll_interval: timedelta = Field(
        default=timedelta(seconds=5),
        description="How often a billing run reads its counts while payments are under way.",
    )
    schedule_day: int = Field(
        default=1, ge=1, le=28, description="Day of month the Schedule bills."
    )
    schedule_hour: int = Field(default=6, ge=0, le=23, description="Hour the Schedule bills.")
    schedule_time_zone: str = Field(default="UTC", description="The Schedule's time zone (IANA).")
    schedule_catchup: timedelta = Field(
        default=timedelta(days=3),
        description="How late a fire missed while Temporal was down still runs.",
    )
    bill_in_arrears: bool = Field(
        default=True, description="The Schedule bills the month before; false: the month of."
    )
    task_queue: str = Field(
        default=TASK_QUEUE, description="Temporal task queue shared by worker and starter."
    )
    # Stripe's live mode allows 25 requests/s per endpoint and 100/s for the account. Each
    # endpoint class has its own queue `<TASK_QUEUE>-stripe-<class>`, whose activity starts
    # the Temporal server holds to this rate across all workers. A margin below 25 absorbs the
    # engine's one-second burst plus the jitter between dispatch and the request reaching
    # Stripe. The three together stay below the account's 100/s.
    stripe_create_per_second: float = Field(
        default=20.0, gt=0, description="Authorizations (PaymentIntent creates) started per second."
    )
    stripe_capture_per_second: float = Field(
        default=20.0, gt=0, description="Captures, voids and refunds started per second."
    )
    stripe_list_per_second: float = Field(
        default=20.0, gt=0, description="PaymentIntent lists (converging) started per second."
    )
    metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Port of the worker's Prometheus /metrics endpoint; 0 turns metrics off.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="IP address the metrics endpoint listens on; 0.0.0.0 for every interface.",
    )
    data_dir: Path = Field(default=Path(".data"), description="Embedded stack state.")
    temporal_ui_url: str | None = Field(
        default=None, description="Temporal Web UI; unset means the embedded dev server's."
    )
    billing_codec_keys: SecretStr | None = Field(
        default=None,
        description="Payload encryption keys, `id:<base64 32 bytes>,…`; the first encrypts.",
    )
    codec_server_host: str = Field(default="127.0.0.1", description="Codec server address.")
    codec_server_port: int = Field(default=8089, ge=1, le=65535, description="Codec server port.")
    codec_server_cors_origins: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Web UI origins the codec server answers; unset: TEMPORAL_UI_URL's.",
    )
    codec_server_token: SecretStr | None = Field(
        default=None, description="Bearer token the codec server requires; unset: none."
    )
    webhook_host: str = Field(default="127.0.0.1", description="Stripe webhook receiver address.")
    webhook_port: int = Field(
        default=8090, ge=1, le=65535, description="Stripe webhook receiver port."
    )
    stripe_webhook_secret: SecretStr | None = Field(
        default=None,
        description="The webhook endpoint's signing secret, whsec_…; set, `make up` runs the "
        "receiver.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as plain text, or one JSON object per line."
    )
    log_level: str = Field(
        default="INFO", description="Lowest level logged: DEBUG, INFO, WARNING or ERROR."
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None,
        description="OpenTelemetry collector (OTLP over HTTP); set, it turns tracing on.",
    )
    otel_service_name: str | None = Field(
        default=None, description="Service name on the spans; unset: billing-worker or -starter."
    )
    embedded_postgres_port: int = 55432
    embedded_temporal_port: int = 7233
    embedded_temporal_ui_port: int = 8233
    sandbox_port: int = 12111

    @field_validator("schedule_time_zone")
    @classmethod
    def _check_time_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like UTC") from err
        return value

    @field_validator("billing_codec_keys")
    @classmethod
    def _check_codec_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_codec_keys(value.get_secret_value())
        return value

    @field_validator("codec_server_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"unknown log level {value!r}; use one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator("codec_server_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        """An empty CODEC_SERVER_TOKEN (compose passes one through when .env has none) means
        no token, not a token that is empty."""
        return None if value == "" else value

    @field_validator("stripe_webhook_secret", mode="before")
    @classmethod
    def _check_webhook_secret(cls, value: object) -> object:
        """Empty means unset (compose passes an empty one through); anything else must look
        like the `secret` Stripe returns when the endpoint is created."""
        if value == "":
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and not text.startswith("whsec_"):
            raise ValueError(
                "not a webhook signing secret; use the `secret` (whsec_…) that "
                "POST /v1/webhook_endpoints returned for this endpoint"
            )
        return value

    @field_validator("otel_exporter_otlp_endpoint")
    @classmethod
    def _check_otlp_endpoint(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(
                "not an http(s) URL; give the collector's OTLP/HTTP address, "
                "e.g. http://127.0.0.1:4318"
            )
        return value or None

    @field_validator("metrics_host")
    @classmethod
    def _check_metrics_host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as err:
            raise ValueError(
                f"{value!r} is not an IP address; use 127.0.0.1, or 0.0.0.0 for every interface"
            ) from err
        return value

    @field_validator("authentication_window")
    @classmethod
    def _check_authentication_window(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative; e.g. 3d, or 0 to turn 3-D Secure off")
        return value

    @field_validator("authentication_return_url")
    @classmethod
    def _check_return_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("not an http(s) URL; e.g. https://example.com/billing/authenticated")
        return value or None

    @field_validator(
        "capture_delay",
        "run_poll_interval",
        "schedule_catchup",
        "authentication_window",
        mode="before",
    )
    @classmethod
    def _parse_durations(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("capture_delay")
    @classmethod
    def _check_capture_delay(cls, value: timedelta) -> timedelta:
        return check_capture_delay(value)

    @field_validator("dunning_schedule", mode="before")
    @classmethod
    def _parse_dunning_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [parse_duration(part) for part in value.split(",") if part.strip()]
        return value

    @field_validator("dunning_schedule")
    @classmethod
    def _check_dunning_schedule(cls, value: list[timedelta]) -> list[timedelta]:
        return check_dunning_schedule(value)

    def billing_policy(self, capture_delay: timedelta | None = None) -> BillingPolicy:
        return BillingPolicy(
            capture_delay=self.capture_delay if capture_delay is None else capture_delay,
            dunning_schedule=tuple(self.dunning_schedule),
            reauthorize_expired=self.reauthorize_expired,
            authentication_window=self.authentication_window,
            authentication_return_url=self.authentication_return_url,
        )

    def stripe_per_second(self) -> dict[str, float]:
        """Per Stripe endpoint class (activities.STRIPE_QUEUES), the activity starts allowed
        per second."""
        return {
            "create": self.stripe_create_per_second,
            "capture": self.stripe_capture_per_second,
            "list": self.stripe_list_per_second,
        }

    def metrics_address(self) -> str | None:
        """Where the worker serves Prometheus metrics, `host:port`; None when they are off."""
        if self.metrics_port == 0:
            return None
        host = self.metrics_host
        return f"[{host}]:{self.metrics_port}" if ":" in host else f"{host}:{self.metrics_port}"

    def resolved_launch_rate(self) -> float:
        """Starts at the Stripe create queue's rate: faster only piles payments up behind it."""
        return self.launch_rate or self.stripe_create_per_second

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"postgresql://postgres@127.0.0.1:{self.embedded_postgres_port}/billing"

    def resolved_stripe_key(self) -> str:
        if self.stripe_api_key is not None:
            return self.stripe_api_key.get_secret_value()
        return SANDBOX_API_KEY

    def resolved_stripe_base(self) -> str | None:
        """None means the SDK's own default, which is Stripe itself."""
        if self.stripe_api_base:
            return self.stripe_api_base
        if self.stripe_api_key is None:
            return f"http://127.0.0.1:{self.sandbox_port}"
        return None

    def codec_keys(self) -> tuple[CodecKey, ...]:
        """The payload codec's keys, first one encrypting; empty: payloads stay plain."""
        if self.billing_codec_keys is None:
            return ()
        return parse_codec_keys(self.billing_codec_keys.get_secret_value())

    def resolved_codec_cors_origins(self) -> list[str]:
        """Origins whose pages may call the codec server: by default the Web UI's."""
        if self.codec_server_cors_origins:
            return self.codec_server_cors_origins
        parts = urlsplit(self.resolved_temporal_ui_url())
        return [f"{parts.scheme}://{parts.netloc}"]

    def codec_server_url(self) -> str:
        return f"http://{self.codec_server_host}:{self.codec_server_port}"

    def webhook_url(self) -> str:
        """Where the receiver listens; register this URL (or the proxy's in front of it)."""
        return f"http://{self.webhook_host}:{self.webhook_port}{WEBHOOK_PATH}"

    def resolved_temporal_ui_url(self) -> str:
        return self.temporal_ui_url or f"http://127.0.0.1:{self.embedded_temporal_ui_port}"

    def embedded_temporal_address(self) -> str:
        return f"127.0.0.1:{self.embedded_temporal_port}"


def describe_invalid(err: ValidationError) -> str:
    """A settings error as one line naming the variable: `LOG_LEVEL: unknown log level …`."""
    problem = err.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]).upper()
    return f"{where}: {problem['msg']}"
