"""Where requests go and on whose account: a destination's key, the same in every process.

Requests to one origin with one API key share a pace. The key names the origin
in clear (for messages and logs) and the credentials only through a keyed hash
(:func:`destination_key`), which is also what Redis holds.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

from requests.structures import CaseInsensitiveDict

__all__ = ["CREDENTIAL_HEADERS", "DestinationKey", "destination_key"]

#: Request headers that carry credentials; their values are hashed into the key, never kept.
CREDENTIAL_HEADERS = ("authorization", "api-key", "x-api-key", "x-goog-api-key")
_CREDENTIALS = frozenset(CREDENTIAL_HEADERS)
_CREDENTIAL_BYTES = frozenset(name.encode() for name in CREDENTIAL_HEADERS)
#: The key of the credentials' hash. Fixed, not random per process, so that every process computes the same
#: fingerprint for the same key and shares one pace through Redis; see :func:`destination_key`.
_FINGERPRINT_KEY = b"aicoder destination fingerprint v1"


class DestinationKey(NamedTuple):
    """Where requests go and on whose account: the origin, and a keyed hash of the origin and the credentials,
    which names the destination in Redis."""

    origin: str
    fingerprint: str


def destination_key(url: str, headers: Mapping[str, str]) -> DestinationKey:
    """Return the key for ``url``'s origin and the credentials in ``headers``.

    The origin and the credentials are hashed with keyed BLAKE2b: the key tells
    two API keys (and one key at two origins) apart but reveals neither. The hash key is fixed rather than random per
    process, so that processes sharing a pace through Redis agree on it; what
    Redis holds is that fingerprint, never a key. Someone who can read Redis and
    already holds a candidate key could confirm it; guessing one is hopeless, as
    API keys carry well over 128 bits of randomness.
    """
    parts = urlsplit(url)
    raw = getattr(headers, "raw", None)
    if isinstance(raw, list):
        # httpx's (and httpx2's) headers: one pass over their bytes, decoding only the credentials (each
        # lookup by name would scan all of them; items() would decode all of them).
        headers = {
            name.lower().decode("latin-1"): value.decode("latin-1")
            for name, value in raw
            if name.lower() in _CREDENTIAL_BYTES
        }
    elif not isinstance(headers, CaseInsensitiveDict):
        headers = {name.lower(): value for name, value in headers.items() if name.lower() in _CREDENTIALS}
    return _key(parts.scheme, parts.netloc, tuple([headers.get(name) or "" for name in CREDENTIAL_HEADERS]))


@functools.lru_cache(maxsize=256)
def _key(scheme: str, netloc: str, credentials: tuple[str, ...]) -> DestinationKey:
    # Cached: every request to an API carries the same origin and key. (The cache holds the credentials
    # themselves, in memory only, as requests' own session and the caller already do.)
    origin = f"{scheme}://{netloc.rpartition('@')[2].lower()}"
    named = "\n".join((origin, *credentials)).encode()
    fingerprint = hashlib.blake2b(named, key=_FINGERPRINT_KEY, digest_size=12).hexdigest()
    return DestinationKey(origin, fingerprint)
