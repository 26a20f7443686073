"""Moved to aicoder.http.cooldown: this module re-exports it for old imports, and says so once."""

import warnings

from aicoder.http.cooldown import *  # noqa: F403

warnings.warn(
    "aicoder.llm.cooldown moved to aicoder.http.cooldown; import from there (or from aicoder)",
    DeprecationWarning,
    stacklevel=2,
)
