"""httpx2 clients for the openai SDK that retry through aicoder: the one line to add to existing SDK code.

::

    client = openai.OpenAI(http_client=aicoder.http_client(), max_retries=0)
    client = openai.AsyncOpenAI(http_client=aicoder.async_http_client(), max_retries=0)

Both follow redirects, wait up to 600 s for an answer (5 s to connect), and take
proxies from the environment (``HTTPS_PROXY``, ``NO_PROXY``, …), as the SDK's own
clients do. Every answer they hand on is
marked ``x-should-retry: false``, which the SDK obeys: a client created without
``max_retries=0`` still never retries an answer on top of aicoder, and its
first retry of anything else (a timeout, a connection error) logs one WARNING.
"""

from __future__ import annotations

import httpx2
import requests

from aicoder.config import Config
from aicoder.http.adapter import retrying_session
from aicoder.http.async_transport import DEFAULT_LIMITS, AsyncLinearBackoffTransport
from aicoder.http.transport import RequestsTransport

__all__ = ["async_http_client", "http_client"]

#: The openai SDK's own clients' timeout; the SDK passes its own with each request anyway.
SDK_TIMEOUT = httpx2.Timeout(600.0, connect=5.0)


def http_client(config: Config | None = None, session: requests.Session | None = None) -> httpx2.Client:
    """An ``httpx2.Client`` for ``openai.OpenAI(http_client=…, max_retries=0)`` that sends through ``session``.

    ``session`` defaults to :func:`~aicoder.http.adapter.retrying_session` for
    ``config`` (default: :meth:`Config.load`), and is then closed with the client;
    a session of the caller's is not. Retrying happens in its adapter.
    """
    owned = session is None
    if session is None:
        session = retrying_session(config)
    transport = RequestsTransport(session, close_session=owned)
    return httpx2.Client(transport=transport, timeout=SDK_TIMEOUT, follow_redirects=True)


def async_http_client(config: Config | None = None) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` for ``openai.AsyncOpenAI(http_client=…, max_retries=0)``.

    Its transport is :class:`~aicoder.http.async_transport.AsyncLinearBackoffTransport`
    with the settings of ``config`` (default: :meth:`Config.load`): the same
    retries, hints and pace as the sync adapter, every wait awaited. Through a
    proxy from the environment, it is one more such transport, on the same pace.
    """
    config = config if config is not None else Config.load()
    return httpx2.AsyncClient(
        transport=AsyncLinearBackoffTransport(config),
        mounts=_proxy_mounts(config),
        timeout=SDK_TIMEOUT,
        follow_redirects=True,
    )


def _proxy_mounts(config: Config) -> dict[str, httpx2.AsyncBaseTransport | None]:
    """The environment's proxies, by URL pattern (``None``: no proxy), as httpx2 mounts them for a client
    given no transport of its own, so for the SDK's; given one, it leaves them out."""
    from httpx2._utils import get_environment_proxies  # httpx2's own rules: the ones the SDK's client follows

    return {
        pattern: None
        if proxy is None
        else AsyncLinearBackoffTransport(
            config, transport=httpx2.AsyncHTTPTransport(proxy=proxy, limits=DEFAULT_LIMITS)
        )
        for pattern, proxy in get_environment_proxies().items()
    }
