"""The package's boundaries: what imports what, and old import paths that still work."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import aicoder
import aicoder.http

OLD_PATHS = {
    "aicoder.llm.retry": ("LinearBackoffAdapter", "aicoder.http.policy and aicoder.http.adapter"),
    "aicoder.llm.cooldown": ("Cooldowns", "aicoder.http.cooldown"),
    "aicoder.llm.hints": ("server_hint", "aicoder.http.hints"),
    "aicoder.llm.schedule": ("linear_delays", "aicoder.http.schedule"),
    "aicoder.llm.transport": ("RequestsTransport", "aicoder.http.transport"),
    "aicoder.llm.waiting": ("instant_waits", "aicoder.http.waiting"),
    "aicoder.llm.redaction": ("safe_url", "aicoder.http.redaction"),
}


def imported_modules(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running ``code``."""
    output = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(output.split())


def test_the_http_layer_never_imports_openai() -> None:
    """``aicoder.http``, its adapter and its bridge included, work without the openai SDK imported."""
    modules = imported_modules("import aicoder.http as h; h.LinearBackoffAdapter; h.RequestsTransport; h.Cooldowns")
    assert "aicoder.http.adapter" in modules
    assert "openai" not in modules


def test_import_aicoder_imports_names_only_when_used() -> None:
    """``import aicoder`` alone loads no HTTP or LLM module; a name brings in its own module."""
    assert not {"openai", "requests", "aicoder.llm.api_client"} & imported_modules("import aicoder")
    assert "openai" not in imported_modules("from aicoder import LinearBackoffAdapter, Config")


@pytest.mark.parametrize("name", aicoder.__all__)
def test_every_public_name_imports_from_aicoder(name: str) -> None:
    """Each name in ``aicoder.__all__`` imports, as it always did."""
    assert getattr(aicoder, name) is not None


@pytest.mark.parametrize("name", aicoder.http.__all__)
def test_every_http_name_imports_from_aicoder_http(name: str) -> None:
    """Each name in ``aicoder.http.__all__`` imports."""
    assert getattr(aicoder.http, name) is not None


def test_an_unknown_name_is_an_attribute_error() -> None:
    """A name aicoder does not have fails as attribute lookups do."""
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        aicoder.Nope  # noqa: B018


@pytest.mark.parametrize(("old", "name_and_new"), OLD_PATHS.items())
def test_old_module_paths_still_import_and_say_where_it_went(old: str, name_and_new: tuple[str, str]) -> None:
    """A moved module still imports from its old path, with a DeprecationWarning naming the new one."""
    name, new = name_and_new
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is not None
