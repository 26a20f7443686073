"""What of a request may appear in a log line or an error message, and what may not."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["redact", "redact_chain", "safe_url", "url_secrets"]

#: A query string, or the user info of a URL, inside any text.
_QUERY = re.compile(r"\?[^\s'\")]*")
_USERINFO = re.compile(r"(?<=//)[^/@\s'\"]+@")
#: Secrets shorter than this are not searched for in text: replacing a one-letter "key" would mangle every word.
MIN_SECRET_LENGTH = 4


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
    """Return ``text`` with every secret in ``secrets`` replaced by ``***``.

    Secrets shorter than :data:`MIN_SECRET_LENGTH` are left alone: a real key is far longer.
    """
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, "***")
    return text


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The parts of ``url`` that may be secret: its password, and the values in its query string."""
    if not url:
        return ()
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return ()
    return tuple(value for value in (password, *(v for _, v in parse_qsl(parts.query))) if value)


def redact_chain(error: BaseException, secrets: Iterable[str | None]) -> None:
    """Scrub the text of ``error`` and every exception chained to it, in place: no query strings, no
    user info, no ``secrets``, so that a traceback printed later shows none of them.
    """
    secrets = tuple(secrets)
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending and len(seen) < 64:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.args = tuple(_scrubbed(arg, secrets) if isinstance(arg, str) else arg for arg in current.args)
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(link for link in linked if isinstance(link, BaseException))


def _scrubbed(text: str, secrets: tuple[str | None, ...]) -> str:
    return redact(_QUERY.sub("", _USERINFO.sub("", text)), secrets)
