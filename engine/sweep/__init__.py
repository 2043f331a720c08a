"""Hyper-parameter sweeps.

* :mod:`engine.sweep.grid` turns sweep YAML files into validated trial configs
  (pure: reads the YAML, never writes).
* :mod:`engine.sweep.runner` runs the trials as subprocesses, ``parallel`` at
  a time, one run directory each, and appends ``sweep_summary.csv`` as each
  trial finishes.
* :mod:`engine.sweep.file_sd` publishes running trials' metrics endpoints as a
  Prometheus ``file_sd`` target file; :mod:`engine.sweep.summary` writes the CSV.
"""
