"""Certificates are verified on both paths, against the bundles the environment names, as requests and the SDK do."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from aicoder.config import Config
from aicoder.llm.api_client import LLMClient
from aicoder.llm.errors import LLMError
from tests.servers import ScriptedServer, completion, scripted_server

PROVIDERS = ["openrouter", "openai"]
BUNDLE_VARIABLES = ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[ScriptedServer, Path]]:
    """An HTTPS server whose certificate a private CA signed, and that CA's bundle in a file."""
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "private-ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    with scripted_server(completion("verified"), tls=context) as server:
        yield server, bundle


def client(provider: str, server: ScriptedServer) -> LLMClient:
    config = Config(
        openrouter_api_key="sk-test-key",
        openrouter_base_url=f"{server.url}/v1",
        openai_api_key="sk-test-key",
        openai_base_url=f"{server.url}/v1",
        retry_count=0,
    )
    return LLMClient(f"{provider}/m", config=config)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("variable", BUNDLE_VARIABLES)
def test_a_private_ca_named_in_the_environment_is_trusted(
    provider: str, variable: str, tls_server: tuple[ScriptedServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and SSL_CERT_FILE each reach both paths."""
    server, bundle = tls_server
    for name in BUNDLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(bundle))
    assert client(provider, server).sendRequest("s", "u") == "verified"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_verification_stays_on(
    provider: str, tls_server: tuple[ScriptedServer, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the CA named anywhere, the certificate is refused, and nothing is sent."""
    server, _ = tls_server
    for name in BUNDLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LLMError, match="could not complete") as caught:
        client(provider, server).sendRequest("s", "u")
    assert caught.value.status is None
    assert server.count == 0
