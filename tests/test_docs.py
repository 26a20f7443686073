"""The docs say what the code does: the default-waits table and the list of settings."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from aicoder.config import _FIELDS, Config
from aicoder.http.schedule import linear_delays

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def test_default_waits_table_matches_the_schedule() -> None:
    """The table in docs/configuration.md is the schedule for the default settings."""
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", CONFIGURATION, flags=re.MULTILINE)
    defaults = Config()
    expected = linear_delays(defaults.retry_count, defaults.retry_min_delay, defaults.retry_max_delay)
    assert [float(wait) for _, wait, _ in rows] == list(expected)


def test_every_setting_is_documented_with_its_default() -> None:
    """Each variable Config reads appears in the docs table and in .env.example."""
    example = resources.files("aicoder").joinpath(".env.example").read_text()
    defaults = Config()
    for variable, field in _FIELDS.items():
        assert f"| `{variable}` |" in CONFIGURATION, variable
        assert f"# {variable}=" in example, variable
        default = getattr(defaults, field)
        if isinstance(default, bool):
            assert f"# {variable}={str(default).lower()}" in example
        elif isinstance(default, float | int):
            assert f"| `{variable}` | `{default:g}` |" in CONFIGURATION
            assert f"# {variable}={default:g}" in example


def test_every_test_named_in_reliability_md_exists() -> None:
    """docs/reliability.md names, for each promise, tests that really exist."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"(?:::|`)(test_[a-z0-9_]+)(?![a-z0-9_.])", text))
    sources = "".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    assert named
    assert sorted(name for name in named if f"def {name}(" not in sources) == []


API_EXAMPLES = [
    # integrations.md's examples run the real SDKs: integration tests, as tests/test_integrations.py.
    pytest.param(page, example, id=f"{page}-{n}", marks=[pytest.mark.integration] if page == "integrations.md" else [])
    for page in ("api.md", "integrations.md")
    for n, example in enumerate(re.findall(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(), flags=re.DOTALL))
]


@pytest.mark.parametrize(("page", "example"), API_EXAMPLES)
def test_every_api_example_runs(page: str, example: str) -> None:
    """Each example in docs/api.md and docs/integrations.md runs as it is, against the built-in endpoint."""
    exec(compile(example, f"docs/{page}", "exec"), {})


def test_the_fake_clock_example_runs() -> None:
    """docs/testing.md's example test of the fake clock passes as it is."""
    text = (ROOT / "docs" / "testing.md").read_text()
    section = text[text.index("## A fake clock for the pace") :]
    example = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert example is not None
    namespace: dict[str, object] = {}
    exec(compile(example[1], "docs/testing.md", "exec"), namespace)
    test = namespace["test_nothing_goes_before_the_stated_time"]
    assert callable(test)
    test()
