"""Structural-plasticity mechanisms (growth, pruning, continual backprop, ReDo, seeds).

Mechanisms decide *what* should change and return plans
(:mod:`engine.mechanisms.plans`); they never edit weights or optimizer state
themselves. :func:`engine.surgery.apply_plan` carries a plan out on the model
and the optimizer together, so the bookkeeping lives in one tested place.
"""
