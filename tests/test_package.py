"""The package's boundaries: what imports what, and what it says of itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

import aicoder
import aicoder.http


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


def test_the_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    """``aicoder.__version__`` and ``aicoder --version`` both say what pyproject.toml says, as installed."""
    from importlib.metadata import version

    from aicoder.cli import main

    assert aicoder.__version__ == version("aicoder")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"aicoder {version('aicoder')}\n"
