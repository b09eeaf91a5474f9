"""Payload encryption: every payload Temporal stores is AES-256-GCM ciphertext when
BILLING_CODEC_KEYS is set.

The value lists keys as `id:<base64 of 32 bytes>`, comma-separated. The first key encrypts;
every key decrypts, so histories written before a rotation still read. Each encrypted payload
names its key id in its metadata, beside the encoding `binary/encrypted`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

if TYPE_CHECKING:
    from billing.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
TAG_BYTES = 16  # GCM's authentication tag, after the ciphertext
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAKE_A_KEY = "make one with `python -m billing.codec_server --new-key`"


class CodecKeyError(ValueError):
    """BILLING_CODEC_KEYS is malformed."""


class UnknownCodecKey(ValueError):
    """A payload was encrypted with a key this process does not hold, or was altered."""


@dataclass(frozen=True)
class CodecKey:
    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"CodecKey({self.key_id!r})"


def parse_codec_keys(value: str) -> tuple[CodecKey, ...]:
    """`id:<base64>,id:<base64>…`, first one encrypting; raises CodecKeyError saying what to do."""
    keys: list[CodecKey] = []
    entries = [entry.strip() for entry in value.split(",")]
    if not any(entries):
        raise CodecKeyError(f"BILLING_CODEC_KEYS is empty; unset it or {MAKE_A_KEY}")
    for position, entry in enumerate(entries, start=1):
        key_id, colon, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not colon or not KEY_ID_PATTERN.fullmatch(key_id):
            raise CodecKeyError(
                f"BILLING_CODEC_KEYS entry {position} is not `id:<base64 key>` with an id of "
                f"letters, digits, '.', '_' or '-'; {MAKE_A_KEY}"
            )
        try:
            secret = base64.b64decode(encoded.strip(), validate=True)
        except binascii.Error:
            raise CodecKeyError(
                f"BILLING_CODEC_KEYS key {key_id!r} is not valid base64; {MAKE_A_KEY}"
            ) from None
        if len(secret) != KEY_BYTES:
            raise CodecKeyError(
                f"BILLING_CODEC_KEYS key {key_id!r} is {len(secret)} bytes, not {KEY_BYTES}; "
                f"{MAKE_A_KEY}"
            )
        if any(key.key_id == key_id for key in keys):
            raise CodecKeyError(
                f"BILLING_CODEC_KEYS names key id {key_id!r} twice; give each key its own id"
            )
        keys.append(CodecKey(key_id, secret))
    return tuple(keys)


def new_key_entry(key_id: str | None = None) -> str:
    """A fresh `id:<base64>` entry for BILLING_CODEC_KEYS; the id defaults to this month."""
    key_id = key_id or datetime.now(UTC).strftime("%Y-%m")
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise CodecKeyError(f"key id {key_id!r}: use letters, digits, '.', '_' or '-'")
    return f"{key_id}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole serialized payload (its metadata included). The key id is
    authenticated data, so a payload cannot be passed off as another key's."""

    def __init__(self, keys: Sequence[CodecKey]) -> None:
        if not keys:
            raise CodecKeyError(f"no codec key given; {MAKE_A_KEY}")
        self._encrypting = keys[0]
        self._ciphers = {key.key_id: AESGCM(key.secret) for key in keys}

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self._encrypting.key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """Payloads that are not encrypted (written before the codec was on) pass through."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise UnknownCodecKey(
                f"payload encrypted with codec key id {key_id!r}, which BILLING_CODEC_KEYS "
                f"does not hold (it holds {', '.join(self.key_ids)}); add that key back"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            if len(sealed) < TAG_BYTES:
                raise InvalidTag
            plain = cipher.decrypt(nonce, sealed, key_id.encode())
        except InvalidTag:
            raise UnknownCodecKey(
                f"payload does not decrypt with codec key id {key_id!r}: the key under that "
                "id is not the one that encrypted it, or the payload was altered"
            ) from None
        decoded = Payload()
        decoded.ParseFromString(plain)
        return decoded


def encrypting_converter(keys: Sequence[CodecKey]) -> DataConverter:
    """The project's converter with the codec. Failure messages and stack traces are encrypted
    too (they may quote a customer's data)."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def data_converter(settings: Settings) -> DataConverter:
    """What every client uses: the pydantic converter, encrypting when keys are set."""
    keys = settings.codec_keys()
    return encrypting_converter(keys) if keys else pydantic_data_converter
