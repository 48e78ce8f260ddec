"""mtrl: multi-task reinforcement learning with gradient aggregation."""

__version__ = "0.1.0"
