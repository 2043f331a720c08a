"""Experiment families; each module registers itself with :mod:`engine.registry`."""
