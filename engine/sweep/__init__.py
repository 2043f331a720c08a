"""Hyper-parameter sweeps.

* :mod:`engine.sweep.grid` turns sweep YAML files into validated trial configs
  (pure: reads the YAML, never writes).
* :mod:`engine.sweep.runner` runs the trials as subprocesses, ``parallel`` at
  a time, one run directory each, and appends ``sweep_summary.csv`` as each
  trial finishes.
* :mod:`engine.sweep.search` validates a file's ``search:`` block (an Optuna
  search instead of a grid); :mod:`engine.sweep.study` asks its trials from a
  study in ``study.db`` as slots free up and :mod:`engine.sweep.pruning` stops
  the ones the pruner rejects, from their ``history.jsonl``;
  :mod:`engine.sweep.source` is the runner's view of both (a list or a study);
  :mod:`engine.sweep.plan` plans every file and keeps what ``--resume`` needs.
* :mod:`engine.sweep.executor` says where a trial runs: a local subprocess, or
  (:mod:`engine.sweep.ray_executor`, optional ``ray``) a Ray actor on a
  cluster node (:mod:`engine.sweep.ray_trial`).
* :mod:`engine.sweep.file_sd` publishes running trials' metrics endpoints as a
  Prometheus ``file_sd`` target file; :mod:`engine.sweep.summary` writes the CSV.
"""
