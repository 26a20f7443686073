"""Moved to aicoder.http.schedule: this module re-exports it for old imports, and says so once."""

import warnings

from aicoder.http.schedule import *  # noqa: F403

warnings.warn(
    "aicoder.llm.schedule moved to aicoder.http.schedule; import from there (or from aicoder)",
    DeprecationWarning,
    stacklevel=2,
)
