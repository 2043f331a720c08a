"""Text samples (TextSample events) in every sink that keeps them, read back in the real formats:
TensorBoard's text plugin (EventAccumulator), an MLflow file store (MlflowClient) and
``text_samples.jsonl`` (also after a SIGKILL, and rewound on resume like the other JSONL files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import require_module

from engine.sinks.results import ResultsSink
from engine.telemetry import events as ev
from engine.telemetry.bus import EventBus

ROOT = Path(__file__).resolve().parent.parent
#: Generated text is arbitrary characters: markdown, newlines, non-ASCII, JSON quotes.
TEXT = 'ROMEO:\n# not a heading *nor* _emphasis_\n\tthou "art" é\\n'


def _samples() -> list[ev.TextSample]:
    return [ev.TextSample(40, 0, "after/apoptosis", "first"),
            ev.TextSample(100, 1, "phase_end/train", TEXT),
            ev.TextSample(180, 2, "phase_end/shift", "last")]


def _publish(bus: EventBus, run_dir: Path, experiment: str = "apoptosis") -> None:
    bus.publish(ev.RunStarted("r1", experiment, {}, str(run_dir), "cpu", 10, 3, phases=("train", "shift")))
    for i, sample in enumerate(_samples()):
        bus.publish(sample)
        bus.publish(ev.EpochCompleted(i, "train" if i < 2 else "shift", 60 * (i + 1), {"val_loss": 1.0}))
    bus.publish(ev.RunEnded("r1", "finished", {}))


def test_tag_is_bounded() -> None:
    ev.TextSample(0, 0, "after/regrow", "x")
    for bad in ("", "Phase End", "../escape", "/abs", "a" * (ev.MAX_TEXT_TAG + 1), "after/apoptosis\n"):
        with pytest.raises(ValueError, match="text sample tag"):
            ev.TextSample(0, 0, bad, "x")


def test_tensorboard_text_plugin(tmp_path: Path) -> None:
    require_module("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from engine.sinks.tensorboard import TensorBoardSink

    bus = EventBus(strict=True)
    bus.attach(TensorBoardSink(tmp_path / "tb"))
    _publish(bus, tmp_path)
    bus.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = {"samples/after/apoptosis", "samples/phase_end/train", "samples/phase_end/shift"}
    # The text plugin claims them (its Text tab lists exactly these tags).
    assert tags <= set(acc.PluginTagToContent("text"))
    events = acc.Tensors("samples/phase_end/train")
    assert [e.step for e in events] == [1]  # the epoch axis shared by every tag
    proto = events[0].tensor_proto
    assert not proto.tensor_shape.dim  # a scalar string: rendered as markdown, not as a table
    body = proto.string_val[0].decode("utf-8")
    assert body.startswith("step 100:\n\n    ")
    # A code block (four-space indent) holding the text unchanged.
    assert "\n".join(line.removeprefix("    ") for line in body.split("\n")[2:]) == TEXT
    assert acc.SummaryMetadata("samples/phase_end/train").display_name == "phase_end/train"


def test_mlflow_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = require_module("mlflow", "mlflow-skinny")
    from engine.sinks.mlflow_sink import MlflowSink

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "results" / "run-1"
    run_dir.mkdir(parents=True)
    sink = MlflowSink(run_dir, "run-1")
    bus = EventBus(strict=True)
    bus.attach(sink)
    _publish(bus, run_dir)
    bus.close()
    client = mlflow.MlflowClient(tracking_uri=sink.tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("plasticity").experiment_id])
    files = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "samples")}
    assert files == {"00000040_after_apoptosis.txt", "00000100_phase_end_train.txt", "00000180_phase_end_shift.txt"}
    assert sorted(files) == [f"{s.step:08d}_{s.tag.replace('/', '_')}.txt" for s in _samples()]  # run order
    local = client.download_artifacts(run.info.run_id, "samples/00000100_phase_end_train.txt", str(tmp_path))
    assert Path(local).read_text(encoding="utf-8") == TEXT


def test_mlflow_ignores_samples_before_the_run_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_module("mlflow", "mlflow-skinny")
    from engine.sinks.mlflow_sink import MlflowSink

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    bus = EventBus(strict=True)
    bus.attach(MlflowSink(tmp_path / "run", "run"))
    bus.publish(ev.TextSample(0, 0, "phase_end/train", "x"))  # no RunStarted yet: nothing to log into
    bus.close()


def test_results_jsonl(tmp_path: Path) -> None:
    bus = EventBus(strict=True)
    bus.attach(ResultsSink(tmp_path))
    _publish(bus, tmp_path)
    bus.close()
    rows = [json.loads(x) for x in (tmp_path / "text_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == [{"epoch": s.epoch, "step": s.step, "tag": s.tag, "text": s.text} for s in _samples()]
    # samples.jsonl keeps one metric per row: its readers index r["metric"].
    assert (tmp_path / "samples.jsonl").read_text() == ""


def test_results_rows_survive_sigkill(tmp_path: Path) -> None:
    """Each row is flushed when written: a run killed right after keeps it."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from engine.sinks.results import ResultsSink
        from engine.telemetry import events as ev
        from engine.telemetry.bus import EventBus
        bus = EventBus(strict=True)
        bus.attach(ResultsSink({str(tmp_path)!r}))
        bus.publish(ev.TextSample(7, 0, "after/grow", "kept"))
        os.kill(os.getpid(), {int(signal.SIGKILL)})
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == -signal.SIGKILL, res.stderr
    rows = [json.loads(x) for x in (tmp_path / "text_samples.jsonl").read_text().splitlines()]
    assert rows == [{"epoch": 0, "step": 7, "tag": "after/grow", "text": "kept"}]


def test_results_resume_rewinds_samples_of_rerun_epochs(tmp_path: Path) -> None:
    bus = EventBus()
    bus.attach(ResultsSink(tmp_path))
    _publish(bus, tmp_path)  # samples of epochs 0, 1, 2; the checkpoint holds epochs 0-1 only
    bus.close()
    bus = EventBus()
    bus.attach(ResultsSink(tmp_path))
    bus.publish(ev.RunStarted("r1", "apoptosis", {}, str(tmp_path), "cpu", 10, 3, start_epoch=2,
                              phases=("train", "shift")))
    bus.publish(ev.TextSample(180, 2, "phase_end/shift", "again"))
    bus.close()
    rows = [json.loads(x) for x in (tmp_path / "text_samples.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["text"]) for r in rows] == [(0, "first"), (1, TEXT), (2, "again")]

