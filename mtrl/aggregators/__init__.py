"""Registry of gradient aggregators (docs/design.md §3).

>>> from mtrl.aggregators import make, AggContext
>>> agg = make("nashmtl", num_tasks=10, update_every=1, max_norm=1.0)
>>> out = agg(G, AggContext(step=0, task_ids=torch.arange(10)))
"""

from __future__ import annotations

from typing import Any

from mtrl.aggregators.base import AggContext, Aggregation, Aggregator, check_gradient_matrix

# One line per method: registry name -> class. Each class lives in its own file.
REGISTRY: dict[str, type[Aggregator]] = {}


def register(cls: type[Aggregator]) -> type[Aggregator]:
    """Class decorator: add ``cls`` to ``REGISTRY`` under ``cls.name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"cannot register {cls.__name__} under name {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


def make(name: str, num_tasks: int, **options: Any) -> Aggregator:
    """Build the aggregator ``name`` for ``num_tasks`` tasks.

    Raises:
        ValueError: unknown name (lists the registered ones) or unknown option (lists the
            accepted ones), or an option value out of range.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown aggregator {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    accepted = cls.option_names()
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for aggregator {name!r}; accepted: {', '.join(accepted) or '(none)'}"
        )
    return cls(num_tasks, **options)


# Importing the method modules fills REGISTRY through @register.
from mtrl.aggregators import methods as _methods  # noqa: E402,F401
from mtrl.aggregators.from_gram import PopulationAggregation, population_coefficients  # noqa: E402

__all__ = [
    "AggContext", "Aggregation", "Aggregator", "REGISTRY", "make", "register", "check_gradient_matrix",
    "PopulationAggregation", "population_coefficients",
]
