"""Moved to aicoder.http.policy and aicoder.http.adapter: this module re-exports them, and says so once."""

import warnings

from aicoder.http.adapter import *  # noqa: F403
from aicoder.http.policy import *  # noqa: F403

warnings.warn(
    "aicoder.llm.retry moved to aicoder.http.policy and aicoder.http.adapter; import from there (or from aicoder)",
    DeprecationWarning,
    stacklevel=2,
)
