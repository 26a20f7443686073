"""``python -m aicoder``: the same as the ``aicoder`` command."""

from aicoder.cli import run

run()
