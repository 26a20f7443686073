"""LLMClient picks its provider from the model name and turns failures into one clear RuntimeError."""

from __future__ import annotations

import dataclasses
import logging
import tracemalloc

import pytest
import responses

from aicoder.config import Config, ConfigError
from aicoder.llm.api_client import LLMClient
from aicoder.llm.providers import MissingAPIKeyError, OpenAIProvider, OpenRouterProvider
from tests.servers import Reply, scripted_server

BASE = "https://llm.test/v1"
CONFIG = Config(openrouter_api_key="or-key", openrouter_base_url=BASE, openai_api_key="oa-key", openai_base_url=BASE)


@pytest.mark.parametrize(
    ("name", "provider", "model"),
    [
        ("openai/gpt-4o", OpenAIProvider, "gpt-4o"),
        ("openrouter/openai/gpt-4o", OpenRouterProvider, "openai/gpt-4o"),
        ("mistral-large", OpenRouterProvider, "mistral-large"),
        ("anthropic/claude-sonnet-4", OpenRouterProvider, "anthropic/claude-sonnet-4"),
    ],
)
def test_prefix_picks_the_provider(name: str, provider: type, model: str) -> None:
    """openai/ and openrouter/ are stripped and choose the provider; anything else goes to OpenRouter as is."""
    client = LLMClient(name, config=CONFIG)
    assert type(client.provider) is provider
    assert client.model == model


@pytest.mark.parametrize("name", ["", "openai/", "openrouter/ "])
def test_empty_model_is_rejected(name: str) -> None:
    """A missing model name is a configuration error naming the value."""
    with pytest.raises(ConfigError, match="model"):
        LLMClient(name, config=CONFIG)


@pytest.mark.parametrize(("name", "variable"), [("openai/gpt-4o", "OPENAI_API_KEY"), ("x", "OPENROUTER_API_KEY")])
def test_missing_key_names_the_variable(name: str, variable: str) -> None:
    """Creating a provider without its key says which variable to set."""
    with pytest.raises(MissingAPIKeyError, match=f"{variable} is not set"):
        LLMClient(name, config=Config())


def test_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a config, the client loads keys and base URLs from the environment."""
    monkeypatch.setenv("OPENROUTER_API_KEY", "env-key")
    monkeypatch.setenv("OPENROUTER_BASE_URL", "http://localhost:11434/v1/")
    with responses.RequestsMock() as mock:
        mock.post("http://localhost:11434/v1/chat/completions", json={"choices": [{"message": {"content": "ok"}}]})
        assert LLMClient("llama3").sendRequest("s", "u") == "ok"
        assert mock.calls[0].request.headers["Authorization"] == "Bearer env-key"


@pytest.mark.parametrize("provider", ["openrouter", "openai"])
@pytest.mark.parametrize("body", [{"choices": []}, {"unexpected": True}, {"choices": [{"message": {"content": None}}]}])
def test_malformed_body_is_a_clear_error(provider: str, body: object) -> None:
    """A 200 that is not a chat completion raises RuntimeError saying so, after one request."""
    with responses.RequestsMock() as mock:
        call = mock.post(f"{BASE}/chat/completions", json=body)
        with pytest.raises(RuntimeError, match="not with a chat completion"):
            LLMClient(f"{provider}/m", config=CONFIG).sendRequest("s", "u")
    assert call.call_count == 1


@pytest.mark.parametrize("provider", ["openrouter", "openai"])
@pytest.mark.parametrize("body", ["<html>hello</html>", "", "[" * 100_000, '{"choices": ' * 50_000])
def test_unreadable_200_bodies_are_a_clear_error(provider: str, body: str) -> None:
    """HTML, an empty body, or JSON nested past Python's recursion limit is "not a chat completion"."""
    with responses.RequestsMock() as mock:
        mock.post(f"{BASE}/chat/completions", body=body, content_type="application/json")
        with pytest.raises(RuntimeError, match="not with a chat completion") as caught:
            LLMClient(f"{provider}/m", config=CONFIG).sendRequest("s", "u")
    assert caught.value.__cause__ is not None


def test_non_json_body_is_a_clear_error() -> None:
    """An HTML page from a wrong base URL is reported as not a chat completion."""
    with responses.RequestsMock() as mock:
        mock.post(f"{BASE}/chat/completions", body="<html>hello</html>", content_type="text/html")
        with pytest.raises(RuntimeError, match="OpenAI-compatible"):
            LLMClient("m", config=CONFIG).sendRequest("s", "u")


def test_401_suggests_checking_the_key() -> None:
    """An authentication failure says to check the key, without showing it."""
    with responses.RequestsMock() as mock:
        mock.post(f"{BASE}/chat/completions", status=401, json={"error": {"message": "No auth credentials found"}})
        with pytest.raises(RuntimeError) as caught:
            LLMClient("m", config=CONFIG).sendRequest("s", "u")
    message = str(caught.value)
    assert message.startswith("openrouter request failed: HTTP 401 Unauthorized on POST https://llm.test/v1/chat")
    assert "Check the API key" in message
    assert "or-key" not in message


def test_query_string_never_reaches_the_error() -> None:
    """A base URL with a query string (some proxies take keys there) is shown without it."""
    config = Config(openrouter_api_key="k", openrouter_base_url="https://llm.test/v1?token=SECRET")
    with responses.RequestsMock() as mock:
        call = mock.post("https://llm.test/v1/chat/completions?token=SECRET", status=500, body="oops")
        with pytest.raises(RuntimeError) as caught:
            LLMClient("m", config=config).sendRequest("s", "u")
    assert call.call_count == 1
    assert "on POST https://llm.test/v1/chat/completions;" in str(caught.value)
    assert "SECRET" not in str(caught.value)


def test_verbose_logs_to_logging_not_stdout(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """verbose=True logs the request at INFO and prints nothing."""
    caplog.set_level(logging.INFO, logger="aicoder")
    with responses.RequestsMock() as mock:
        mock.post(f"{BASE}/chat/completions", json={"choices": [{"message": {"content": "ok"}}]})
        LLMClient("m", config=CONFIG).sendRequest("s", "u", verbose=True)
        LLMClient("m", config=CONFIG).sendRequest("s", "u", verbose=False)
    assert capsys.readouterr().out == ""
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1
    assert infos[0].name == "aicoder.llm.providers.openrouter"
    assert "POST https://llm.test/v1/chat/completions model=m: HTTP 200" in infos[0].getMessage()


@pytest.mark.parametrize("provider", ["openrouter", "openai"])
def test_a_huge_error_body_is_read_only_at_its_start(provider: str) -> None:
    """A 20 MB error body costs at most a few MB of memory: only its first 64 KiB are read and quoted."""
    body = b"word " * 4_000_000
    with scripted_server(Reply(500, body, {"Content-Type": "text/plain"})) as server:
        config = Config(openrouter_api_key="k" * 20, openrouter_base_url=f"{server.url}/v1", openai_api_key="k" * 20)
        config = dataclasses.replace(config, openai_base_url=f"{server.url}/v1")
        client = LLMClient(f"{provider}/m", config=config)
        tracemalloc.start()
        try:
            with pytest.raises(RuntimeError, match="HTTP 500") as caught:
                client.sendRequest("s", "u")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 5_000_000
    assert '"word word' in str(caught.value)


def test_a_model_that_is_no_string_is_a_config_error() -> None:
    """``LLMClient(None)`` says what a model name is, instead of an AttributeError."""
    with pytest.raises(ConfigError, match="model None is not allowed"):
        LLMClient(None, config=CONFIG)  # type: ignore[arg-type]


@pytest.mark.parametrize("provider", ["openrouter", "openai"])
def test_a_status_outside_2xx_is_no_success(provider: str) -> None:
    """HTTP 999 is reported as an HTTP failure with its status, not as a success without a completion."""
    with responses.RequestsMock() as mock:
        mock.post(f"{BASE}/chat/completions", status=999, json={"error": {"message": "odd"}})
        with pytest.raises(RuntimeError, match="HTTP 999") as caught:
            LLMClient(f"{provider}/m", config=CONFIG).sendRequest("s", "u")
    assert "success" not in str(caught.value)
