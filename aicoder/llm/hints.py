"""Moved to aicoder.http.hints: this module re-exports it for old imports, and says so once."""

import warnings

from aicoder.http.hints import *  # noqa: F403

warnings.warn(
    "aicoder.llm.hints moved to aicoder.http.hints; import from there (or from aicoder)",
    DeprecationWarning,
    stacklevel=2,
)
