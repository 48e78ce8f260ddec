"""Imports every method module so that each registers itself (one line per file)."""

from mtrl.aggregators import ls  # noqa: F401
