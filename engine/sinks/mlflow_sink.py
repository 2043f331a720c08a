"""MLflow sink: params at start, one batched metric write per epoch, artifacts at end.

Generated text samples (``samples/<step>_<tag>.txt``) and structural decisions
(``decisions/<step>_<kind>.json``, the step zero-padded to 8 digits so the files
sort in run order) are logged as artifacts as they come; milestones are run tags
(``milestone.<name>``).

It talks through an explicit :class:`mlflow.MlflowClient`, never the fluent
``mlflow.start_run`` global state, so several runs in one process (sweeps,
tests) cannot end up logging into each other's run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlparse

from engine.errors import SinkUnavailableError
from engine.telemetry import events as ev

log = logging.getLogger(__name__)

#: MLflow limits (mlflow.utils.validation): key and param value length, batch sizes.
MAX_KEY, MAX_VALUE, MAX_PARAMS_PER_BATCH, MAX_METRICS_PER_BATCH = 250, 6000, 100, 1000
#: Files copied from the run directory when the run ends (checkpoints are not).
ARTIFACTS = ("config.yaml", "metrics.json", "*.log", "artifacts/*")
#: Engine terminal status -> MLflow RunStatus name.
STATUS = {"finished": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "interrupted": "KILLED"}
_BAD_KEY = re.compile(r"[^\w\-. :/]")  # MLflow rejects any other character in names
_BAD_FILE = re.compile(r"[^\w\-.]")  # a text sample's tag as one file-name component


def _key(name: str) -> str:
    return _BAD_KEY.sub("_", name)[:MAX_KEY]


def flatten(cfg: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(dotted.key, value-as-string)`` for every leaf of a nested dict."""
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from flatten(v, key + ".")
        else:
            yield key, v if isinstance(v, str) else json.dumps(v, default=str)


class MlflowSink:
    """Logs one engine run as one MLflow run.

    The tracking URI is ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a
    local file store ``<run_dir>/../mlruns`` (the output root shared by runs).
    The constructor makes no network call: an unreachable server surfaces as
    an exception in the first handler, which the bus isolates.
    """

    name = "mlflow"

    def __init__(self, run_dir: Path, run_name: str, tracking_uri: str | None = None,
                 experiment_name: str = "plasticity") -> None:
        try:
            import mlflow
            from mlflow.entities import Metric, Param, RunTag
        except ImportError as exc:
            raise SinkUnavailableError("mlflow", "mlflow-skinny") from exc
        self._Metric, self._Param, self._RunTag = Metric, Param, RunTag
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.experiment_name = experiment_name
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (
            (self.run_dir.parent / "mlruns").resolve().as_uri())
        if urlparse(uri).scheme in ("", "file") and uri != "databricks":
            # MLflow 3 refuses file stores unless opted in; plain paths are file stores too.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.tracking_uri = uri
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None
        self._epoch = 0
        self._samples: dict[str, float] = {}
        self._broken = False

    def handlers(self) -> dict[type, Any]:
        """Event type -> handler (each marks the sink broken if it raises)."""
        table = {ev.RunStarted: self._on_run_started, ev.EpochCompleted: self._on_epoch,
                 ev.MetricSamples: self._on_samples, ev.TextSample: self._on_text_sample,
                 ev.Decision: self._on_decision, ev.Milestone: self._on_milestone, ev.RunEnded: self._on_run_ended}
        return {etype: self._guard(fn) for etype, fn in table.items()}

    def _guard(self, fn: Any) -> Any:
        def handler(event: Any) -> None:
            try:
                fn(event)
            except Exception:
                self._broken = True  # close() must not retry a dead server
                raise
        return handler

    def _metrics(self, values: dict[str, float], step: int) -> list[Any]:
        ts = int(time.time() * 1000)
        # NaN/Inf are dropped on purpose: the file store would keep them, but a gap
        # reads better than a poisoned min/max; divergence shows in the status tag.
        return [self._Metric(_key(k), float(v), ts, step)
                for k, v in values.items() if math.isfinite(float(v))]

    def _log(self, metrics: Sequence[Any], tags: Sequence[Any] = ()) -> None:
        # One request per epoch; only a run with >1000 seeds x metrics would split.
        assert self.run_id is not None
        n = len(metrics) or (1 if tags else 0)
        for i in range(0, n, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH],
                                  tags=tags if i == 0 else ())

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return str(exp.experiment_id)
        try:
            return str(self.client.create_experiment(self.experiment_name))
        except Exception:
            # A parallel trial of the same sweep may have created it meanwhile.
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def _on_run_started(self, e: ev.RunStarted) -> None:
        exp_id = self._experiment_id()
        # engine.run_id is unique per launch (a resume logs a new MLflow run with the same
        # one); engine.config_hash groups the launches of one config.
        tags = {"engine.run_id": e.run_id, "engine.config_hash": e.config_hash, "engine.experiment": e.experiment,
                "engine.device": e.device, "engine.run_dir": e.run_dir, "status": "running"}
        self.run_id = self.client.create_run(exp_id, run_name=self.run_name, tags=tags).info.run_id
        self._epoch = e.start_epoch
        params = [self._Param(_key(k), v[:MAX_VALUE]) for k, v in flatten(e.config)]
        params.append(self._Param("parameters", str(e.parameters)))
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + MAX_PARAMS_PER_BATCH])

    def _on_epoch(self, e: ev.EpochCompleted) -> None:
        if self.run_id is None:
            return
        self._epoch = e.epoch
        values: dict[str, float] = dict(e.metrics)
        values.update(samples_per_second=e.samples_per_second, duration_seconds=e.duration_seconds,
                      plateau=e.plateau, progress=e.progress, parameters=e.parameters)
        for s in e.seeds:
            values[f"seeds/{s.seed_id}/alpha"] = s.alpha
            values[f"seeds/{s.seed_id}/drift"] = s.drift
        values.update(self._samples)  # the epoch's latest family measurements
        self._samples = {}
        self._log(self._metrics(values, e.epoch))

    def _on_samples(self, e: ev.MetricSamples) -> None:
        # Buffered until the epoch ends: one request per epoch, not per measurement.
        for s in e.samples:
            self._samples["/".join((s.metric, *s.labels))] = s.value

    def _on_text_sample(self, e: ev.TextSample) -> None:
        # One artifact per sample (few per run: phase ends, structural events);
        # the tag's slashes become underscores so every sample sits in samples/.
        if self.run_id is None:
            return
        self.client.log_text(self.run_id, e.text, f"samples/{e.step:08d}_{_BAD_FILE.sub('_', e.tag)}.txt")

    def _on_decision(self, e: ev.Decision) -> None:
        # One JSON artifact per decision (a few per run): the record decisions.jsonl holds.
        if self.run_id is None:
            return
        self.client.log_text(self.run_id, json.dumps(e.record(), indent=2, sort_keys=True) + "\n",
                             f"decisions/{e.step:08d}_{e.kind}.json")

    def _on_milestone(self, e: ev.Milestone) -> None:
        # A tag, so runs can be searched by it (tags."milestone.warmup_stable" != "").
        if self.run_id is None:
            return
        detail = f": {e.detail}" if e.detail else ""
        self.client.set_tag(self.run_id, _key(f"milestone.{e.name}"), f"step {e.step}{detail}"[:MAX_VALUE])

    def _on_run_ended(self, e: ev.RunEnded) -> None:
        if self.run_id is None:
            return
        finals = self._metrics({f"final/{k}": v for k, v in e.metrics.items()}, self._epoch)
        tags = [self._RunTag("status", e.status)]
        if e.error:
            tags.append(self._RunTag("error", e.error[:MAX_VALUE]))
        self._log(finals, tags=tags)
        for path in sorted({p for pattern in ARTIFACTS for p in self.run_dir.glob(pattern)}):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self._terminate(STATUS.get(e.status, "FAILED"))

    def _terminate(self, status: str) -> None:
        run_id, self.run_id = self.run_id, None
        if run_id is not None:
            self.client.set_terminated(run_id, status=status)

    def close(self) -> None:
        """End the run as KILLED if RunEnded never arrived (skipped once broken)."""
        if not self._broken:
            self._terminate("KILLED")
