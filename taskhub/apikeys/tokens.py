"""Secrets: API keys and unit tokens are random, shown once, stored as sha256 digests.

A sha256 (not a slow password hash) is right here: the secrets carry 256 bits of randomness, so
there is nothing to brute-force, and lookups by digest stay one indexed query per request.
"""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "thk_"
UNIT_TOKEN_PREFIX = "thu_"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_unit_token() -> str:
    return UNIT_TOKEN_PREFIX + secrets.token_urlsafe(32)
