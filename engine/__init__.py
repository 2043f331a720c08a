"""Structural-plasticity training engine with first-class observability."""

__version__ = "0.1.0"
