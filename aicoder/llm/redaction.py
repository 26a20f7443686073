"""What of a request may appear in a log line or an error message, and what may not."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact", "safe_url"]


def safe_url(url: str, *, scheme: str = "", host: str | None = None, port: int | None = None) -> str:
    """Return ``url`` without user info, query string or fragment, which may carry secrets.

    A relative ``url`` (urllib3 passes the path alone) is made absolute with
    ``scheme``, ``host`` and ``port``.
    """
    parts = urlsplit(url)
    if parts.scheme:
        scheme, host, port = parts.scheme, parts.hostname, parts.port
    if host and ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if host and port else host or ""
    return urlunsplit((scheme, netloc, parts.path, "", ""))


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Return ``text`` with every non-empty secret in ``secrets`` replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
