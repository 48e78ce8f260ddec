"""Imports every method module so that each registers itself (one line per file)."""

from mtrl.aggregators import ls  # noqa: F401
from mtrl.aggregators import nashmtl  # noqa: F401
from mtrl.aggregators import fairgrad  # noqa: F401
from mtrl.aggregators import pivrg  # noqa: F401
