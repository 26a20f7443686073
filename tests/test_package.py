"""The package's boundaries: what imports what, and what it says of itself."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


def test_the_openai_sdk_is_imported_only_for_the_openai_provider() -> None:
    """The CLI and an OpenRouter client start without the openai SDK, half a second to import."""
    code = (
        "import sys, aicoder.cli; from aicoder import Config, LLMClient\n"
        "LLMClient('m', config=Config(openrouter_api_key='k'))\n"
        "print('openai' in sys.modules)\n"
        "LLMClient('openai/m', config=Config(openai_api_key='k'))\n"
        "print('openai' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "True"]


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


def test_the_retry_policy_depends_on_a_leaf_for_the_current_turn_not_on_the_pace() -> None:
    """``LinearRetry`` finds the request's turn in :mod:`aicoder.http.turns`: importing it imports no pace."""
    modules = imported_modules("import aicoder.http.policy")
    assert "aicoder.http.turns" in modules
    assert not {"aicoder.http.cooldown", "aicoder.http.pace", "aicoder.http.redis_pace"} & modules


def test_no_module_of_the_package_imports_one_that_imports_it() -> None:
    """The import graph has no cycle, type-only imports included."""
    graph: dict[str, set[str]] = {}
    root = Path(aicoder.__file__).parent
    for path in root.rglob("*.py"):
        module = ".".join(("aicoder", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aicoder"):
                names = {f"{node.module}.{alias.name}" for alias in node.names}
                imported |= (names & {f"aicoder.http.{name}" for name in ("turns", "waiting")}) or {node.module}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("aicoder")}
        graph[module] = imported - {module}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph.get(start, ())
        )

    packages = {"aicoder", "aicoder.http", "aicoder.llm", "aicoder.testing"}  # their __init__ re-export lazily
    cycles = sorted(module for module in graph if module not in packages and reaches(module, module, set()))
    assert cycles == []
