"""The end of a run is seen by Prometheus; counters never go backwards.

* A run that ends badly (here: NaN at its very first step) keeps its endpoint
  up, even though nothing scraped it yet, until one scrape has seen the final
  status; a healthy run nobody scrapes exits without waiting.
* A crash while the experiment is built (before training) is a ``failed``
  run like any other: metrics.json and a scrape of the endpoint say so.
* SIGKILL after a checkpoint, then ``--resume`` on the same port: a real
  Prometheus scraping every second sees no counter reset, although the
  killed process had exported more steps than the checkpoint holds (so
  ``rate()``/``increase()`` do not spike over the restart).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from _e2e import read_json, read_jsonl, run_dir_in, start, stop, try_scrape, wait_for
from conftest import free_port
from test_e2e_alerting import local_stack, query

from engine import registry
from engine.cli.wiring import execute_run
from engine.config import Section, build_config
from engine.telemetry.catalog import CATALOG

QUIET = ["--console", "off", "--no_tensorboard", "--threads", "1"]


def _ended(run_dir: Path | None) -> bool:
    doc = read_json(run_dir / "metrics.json") if run_dir else None
    return bool(doc and doc.get("status") not in (None, "running"))


def test_bad_end_waits_for_its_first_scrape(tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "out"
    proc = start(["--fault_nan_step", "0", "--metrics_port", str(port), "--metrics_linger", "120", *QUIET,
                  "--output_dir", str(out)], tmp_path / "logs")
    try:
        wait_for("the run to end", lambda: _ended(run_dir_in(out)), timeout=90, proc=proc)
        time.sleep(2.0)  # longer than the old behaviour needed to close an unscraped endpoint
        assert proc.poll() is None, "the endpoint closed before anything scraped the divergence"
        s = wait_for("a scrape", lambda: try_scrape(port), timeout=10)
        on = [lab["status"] for lab, v in s.labelled("plasticity_run_status") if v == 1.0]
        assert on == ["diverged"] and s.one("plasticity_nonfinite_loss_steps_total") == 1.0
        assert proc.wait(timeout=20) == 3  # that scrape ended the wait
    finally:
        stop(proc)


def test_healthy_end_without_scrapes_does_not_wait(tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "out"
    proc = start(["--warm_up_epochs", "2", "--adaptation_epochs", "2", "--metrics_port", str(port),
                  "--metrics_linger", "600", *QUIET, "--output_dir", str(out)], tmp_path / "logs")
    try:
        assert proc.wait(timeout=120) == 0  # far less than the linger: it never waited for a scrape
    finally:
        stop(proc)


def _last_checkpoint_step(run_dir: Path, every: int) -> int:
    rows = read_jsonl(run_dir / "history.jsonl")
    done = [r["step"] for r in rows if (r["epoch"] + 1) % every == 0]
    return done[-1] if done else 0


def test_resume_after_sigkill_makes_no_counter_reset(tmp_path: Path) -> None:
    every = 40  # epochs between checkpoints: the killed process gets well past the last one
    with local_stack(tmp_path / "stack") as st:
        out = tmp_path / "out"
        args = ["--warm_up_epochs", "400", "--adaptation_epochs", "0", "--checkpoint_every", str(every),
                "--metrics_port", str(st.engine_port), "--metrics_linger", "30", *QUIET, "--output_dir", str(out)]
        proc = start(args, tmp_path / "logs1")
        resumed = None
        try:
            run_dir = wait_for("the run dir", lambda: run_dir_in(out), timeout=60, proc=proc)
            run_id = wait_for("metrics.json", lambda: (read_json(run_dir / "metrics.json") or {}).get("run_id"),
                              timeout=60, proc=proc)
            sel = f'plasticity_steps_total{{run_id="{run_id}"}}'

            def past_checkpoint() -> bool:
                seen = query(st.prometheus, sel)
                ckpt = _last_checkpoint_step(run_dir, every)
                return bool(seen) and ckpt > 0 and float(seen[0]["value"][1]) > ckpt + 25

            wait_for("Prometheus to see steps beyond a checkpoint", past_checkpoint, timeout=120, interval=0.2,
                     proc=proc)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            seen_before = float(query(st.prometheus, f"max_over_time({sel}[10m])")[0]["value"][1])
            ckpt = _last_checkpoint_step(run_dir, every)
            assert seen_before > ckpt  # without the ledger the counter would drop to the checkpoint's step
            resumed = start(["--resume", str(run_dir)], tmp_path / "logs2")
            assert resumed.wait(timeout=180) == 0, resumed.err()[-3000:]
            # Every counter of the run, over the whole history: not one reset.
            counters = [m.name for m in CATALOG if m.kind == "counter" and m.applies_to("seeds")]
            for name in counters:
                if name.endswith("structural_changes_total"):
                    continue  # labelled by the changed layer: no series before a change (warm-up only here)
                resets = query(st.prometheus, f'resets({name}{{run_id="{run_id}"}}[10m])')
                assert resets and all(float(r["value"][1]) == 0 for r in resets), (name, resets)
            final = float(query(st.prometheus, f"max_over_time({sel}[10m])")[0]["value"][1])
            assert final >= seen_before and (run_dir / "prometheus_counters.json").is_file()
        finally:
            stop(proc)
            stop(resumed)


class _BrokenConfig(Section):
    """Config of a family whose constructor crashes (a bug, an out-of-memory)."""


def _broken_family(cfg: Any, device: Any) -> Any:
    raise RuntimeError("simulated crash while building the experiment")


def test_crash_before_training_is_a_failed_run_seen_by_a_scrape(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._EXPERIMENTS, "broken",
                        registry.ExperimentSpec("broken", _BrokenConfig, _broken_family, "crashes"))
    port = free_port()
    cfg = build_config({"experiment": "broken", "metrics_port": port, "metrics_linger": 60, "console": "off",
                        "tensorboard": False, "output_dir": str(tmp_path)})
    seen: list[Any] = []

    def scraper() -> None:  # scrapes until it sees the final status (as Prometheus would)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen:
            s = try_scrape(port, timeout=2)
            if s is not None and any(v == 1.0 and lab["status"] == "failed"
                                     for lab, v in s.labelled("plasticity_run_status")):
                seen.append(s)
            time.sleep(0.1)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    run_dir = tmp_path / "runs" / "crash"
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute_run(cfg, run_dir)
    thread.join(timeout=10)
    assert seen, "no scrape saw the failed status before the endpoint closed"
    doc = read_json(run_dir / "metrics.json")
    assert doc is not None and doc["status"] == "failed" and "simulated crash" in doc["error"], doc
    assert not (run_dir / "endpoint.json").exists()
