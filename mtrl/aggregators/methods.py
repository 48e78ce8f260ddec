"""Imports every method module so that each registers itself (one line per file)."""

from mtrl.aggregators import ls  # noqa: F401
from mtrl.aggregators import nashmtl  # noqa: F401
from mtrl.aggregators import fairgrad  # noqa: F401
from mtrl.aggregators import pivrg  # noqa: F401
from mtrl.aggregators import auxinash  # noqa: F401
from mtrl.aggregators import auxilearn  # noqa: F401
from mtrl.aggregators import cagrad  # noqa: F401
from mtrl.aggregators import cagrad_fast  # noqa: F401
from mtrl.aggregators import mgda  # noqa: F401
from mtrl.aggregators import pcgrad  # noqa: F401
from mtrl.aggregators import imtlg  # noqa: F401
from mtrl.aggregators import rlw  # noqa: F401
from mtrl.aggregators import dwa  # noqa: F401
from mtrl.aggregators import uw  # noqa: F401
from mtrl.aggregators import si  # noqa: F401
from mtrl.aggregators import famo  # noqa: F401
