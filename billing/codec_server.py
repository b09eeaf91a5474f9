"""`python -m billing.codec_server`: the remote codec that lets the Temporal Web UI and CLI show
encrypted payloads in clear, for those allowed to see them.

It speaks the remote codec protocol: POST /decode and /encode, a JSON body
`{"payloads": [...]}` in protobuf JSON form, the namespace in an X-Namespace header. It answers
CORS requests from the Web UI's origin, and with CODEC_SERVER_TOKEN set it refuses any request
without `Authorization: Bearer <token>`. `--new-key` prints a fresh BILLING_CODEC_KEYS entry.
"""

import argparse
import hmac
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Error as ProtobufError
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload, Payloads

from billing.codec import CodecKeyError, EncryptionCodec, UnknownCodecKey, new_key_entry
from billing.logs import configure_logging
from billing.settings import Settings, describe_invalid

log = logging.getLogger("billing.codec_server")
# Temporal's own limit on one payload is 2 MB; a request may carry several.
MAX_BODY_BYTES = 16 * 1024 * 1024
ALLOWED_HEADERS = "Authorization, Content-Type, X-Namespace"
PREFLIGHT_MAX_AGE_S = "600"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def codec_app(
    codec: EncryptionCodec, cors_origins: Sequence[str], token: str | None = None
) -> web.Application:
    """The codec server's routes; `token` None leaves them open (keep it on loopback then)."""

    @web.middleware
    async def cors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":  # a preflight carries no credentials by design
            response: web.StreamResponse = web.Response(status=204)
        elif token is not None and not _bearer_matches(request, token):
            response = web.json_response(
                {"message": "a valid `Authorization: Bearer <token>` header is required"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        else:
            response = await handler(request)
        if origin is not None and origin.rstrip("/") in cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE_S
        response.headers["Vary"] = "Origin"
        return response

    async def encode(request: web.Request) -> web.Response:
        return await _convert(request, codec.encode)

    async def decode(request: web.Request) -> web.Response:
        return await _convert(request, codec.decode)

    app = web.Application(middlewares=[cors_and_auth], client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/encode", encode)
    app.router.add_post("/decode", decode)
    return app


def _bearer_matches(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)


async def _convert(
    request: web.Request, convert: Callable[[Sequence[Payload]], Awaitable[list[Payload]]]
) -> web.Response:
    try:
        payloads = json_format.Parse(await request.text(), Payloads())
    except (ProtobufError, ValueError) as err:
        return web.json_response({"message": f"body is not a Payloads JSON: {err}"}, status=400)
    try:
        converted = await convert(list(payloads.payloads))
    except UnknownCodecKey as err:
        return web.json_response({"message": str(err)}, status=422)
    log.info(
        "%s %d payload(s) for namespace %s",
        request.path.strip("/"),
        len(converted),
        request.headers.get("X-Namespace", "(none)"),
    )
    body = json_format.MessageToJson(Payloads(payloads=converted))
    return web.Response(text=body, content_type="application/json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m billing.codec_server",
        description="Decrypt payloads for the Temporal Web UI and CLI (remote codec server).",
    )
    parser.add_argument(
        "--new-key",
        nargs="?",
        const="",
        metavar="ID",
        help="print a new BILLING_CODEC_KEYS entry `ID:<base64>` (ID defaults to this month)",
    )
    args = parser.parse_args(argv)
    try:
        if args.new_key is not None:
            print(new_key_entry(args.new_key or None))
            return 0
        settings = Settings()
        keys = settings.codec_keys()
    except CodecKeyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        print(f"error: {describe_invalid(err)}", file=sys.stderr)
        return 2
    if not keys:
        print(
            "error: BILLING_CODEC_KEYS is not set, so there is nothing to decrypt with; "
            "make a key with `python -m billing.codec_server --new-key`",
            file=sys.stderr,
        )
        return 2
    token = settings.codec_server_token
    origins = settings.resolved_codec_cors_origins()
    configure_logging(settings)
    log.info(
        "codec server on %s, keys %s, CORS origins %s, %s",
        settings.codec_server_url(),
        ", ".join(key.key_id for key in keys),
        ", ".join(origins),
        "bearer token required" if token else "no token required",
    )
    app = codec_app(
        EncryptionCodec(keys), origins, None if token is None else token.get_secret_value()
    )
    web.run_app(
        app,
        host=settings.codec_server_host,
        port=settings.codec_server_port,
        print=None,
        access_log=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
