"""Moved to aicoder.http.transport: this module re-exports it for old imports, and says so once."""

import warnings

from aicoder.http.transport import *  # noqa: F403

warnings.warn(
    "aicoder.llm.transport moved to aicoder.http.transport; import from there (or from aicoder)",
    DeprecationWarning,
    stacklevel=2,
)
