"""Moved to aicoder.http.redaction: this module re-exports it for old imports, and says so once."""

import warnings

from aicoder.http.redaction import *  # noqa: F403

warnings.warn(
    "aicoder.llm.redaction moved to aicoder.http.redaction; import from there (or from aicoder)",
    DeprecationWarning,
    stacklevel=2,
)
