"""Moved to aicoder.http.waiting: this module re-exports it for old imports, and says so once."""

import warnings

from aicoder.http.waiting import *  # noqa: F403

warnings.warn(
    "aicoder.llm.waiting moved to aicoder.http.waiting; import from there (or from aicoder)",
    DeprecationWarning,
    stacklevel=2,
)
