"""Sweep runner with a fake trial command (no torch, no real engine trial)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from engine.config import RunConfig, TelemetryConfig, TrainConfig
from engine.sweep.file_sd import TargetsFile
from engine.sweep.grid import Trial
from engine.sweep.runner import SweepResult, run_sweep
from engine.sweep.summary import SummaryCsv

ROOT = Path(__file__).resolve().parents[1]

# The fake trial: behaviour chosen per train.seed through FAKE_MODES
# (ok: serve + sleep + metrics.json; fail: exit 1 silently; hang: serve until
# SIGTERM/SIGKILL; diverge: like ok, then status diverged and exit 3). Like the
# real results sink it writes status "running" first. Records its pid,
# start/end times and port. With FAKE_GATE set (see Sweep's ``gate``), a
# registered ok/diverge trial also stays up until the test has seen it in the
# file_sd file: the test never depends on catching a sub-second window.
FAKE_TRIAL = r'''
import json, os, signal, socket, sys, time
from pathlib import Path
import yaml
run_dir = Path(sys.argv[1])
cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
seed = cfg["train"]["seed"]
mode = json.loads(os.environ.get("FAKE_MODES", "{}")).get(str(seed), "ok")
def write(name, obj):
    (run_dir / (name + ".tmp")).write_text(json.dumps(obj))
    os.replace(run_dir / (name + ".tmp"), run_dir / name)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
start = time.time()
write("pid.json", {"pid": os.getpid()})
if mode == "fail":
    print("loading data")
    print("boom: fake failure", flush=True)
    sys.exit(1)
write("metrics.json", {"status": "running", "metrics": {}, "error": ""})
port = cfg["telemetry"]["metrics_port"]
if port:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    write("endpoint.json", {"host": "0.0.0.0", "port": port})
    gate = os.environ.get("FAKE_GATE")
    if gate and mode != "hang":
        release = Path(gate) / run_dir.name.split("_")[1]  # run_001_<hash> -> "001", its trial label
        held_until = time.time() + 60  # a bound, should the test never release it
        while not release.exists() and not stop and time.time() < held_until:
            time.sleep(0.01)
deadline = start + (60 if mode == "hang" else float(os.environ.get("FAKE_SLEEP", "0.5")))
while time.time() < deadline and not stop:
    time.sleep(0.01)
write("times.json", {"start": start, "end": time.time(), "port": port})
status = "interrupted" if stop else "diverged" if mode == "diverge" else "finished"
write("metrics.json", {"status": status, "error": None,
                       "metrics": {"val_accuracy": seed / 10, "epochs": 3, "unlisted": 7}})
sys.exit(3 if mode == "diverge" else 0)
'''

# Runs a sweep of N fake trials in its own process, for the signal/crash tests.
DRIVER = r'''
import json, sys
from pathlib import Path
from engine.config import RunConfig, TrainConfig
from engine.sweep.grid import Trial
from engine.sweep.runner import run_sweep
sweep_dir, sd_dir, result, fake, n = sys.argv[1:6]
trials = [Trial(i, f"{i:010x}", {"seed": i}, RunConfig.model_construct(train=TrainConfig(seed=i)),
                {"seed": i}) for i in range(1, int(n) + 1)]
res = run_sweep(trials, Path(sweep_dir), sweep_name="drv", file_sd_dir=Path(sd_dir),
                trial_command=lambda d: [sys.executable, fake, str(d)])
Path(result).write_text(json.dumps({"rows": res.rows, "failed": res.failed,
                                    "interrupted": res.interrupted}))
'''


def make_trials(seeds: list[int], **telemetry: Any) -> list[Trial]:
    return [
        Trial(i, f"{s:04d}abcdef", {"seed": s},
              RunConfig.model_construct(train=TrainConfig(seed=s), telemetry=TelemetryConfig(**telemetry)),
              {"seed": s})
        for i, s in enumerate(seeds, start=1)
    ]


def wait_for(pred: Callable[[], Any], timeout: float = 15.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out waiting")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Sweep:
    """run_sweep in a background thread while the test watches the file_sd file.

    With ``gate`` > 0, registered trials stay up until released: none is
    released before one snapshot has shown ``gate`` trials registered at once,
    and from then on each is released as soon as a snapshot shows it. What a
    test asserts about the snapshots (a trial seen registered, two at once)
    then holds however slowly this thread or the trials get scheduled.
    """

    def __init__(self, tmp: Path, trials: list[Trial], modes: dict[str, str], parallel: int = 1,
                 gate: int = 0) -> None:
        fake = tmp / "fake_trial.py"
        fake.write_text(FAKE_TRIAL)
        self.sweep_dir, self.sd_file = tmp / "sweep", tmp / "sd" / "sweep.json"
        self.snapshots: list[list[dict]] = []
        self.result: SweepResult | None = None
        self.gate, self.gate_dir, self.gate_open = gate, tmp / "gate", False
        env = {"FAKE_MODES": json.dumps(modes)}
        if gate:
            self.gate_dir.mkdir()
            env["FAKE_GATE"] = str(self.gate_dir)
        kwargs = dict(sweep_name="demo", parallel=parallel, file_sd_dir=tmp / "sd",
                      trial_command=lambda d: [sys.executable, str(fake), str(d)], env=env)

        def target() -> None:
            self.result = run_sweep(trials, self.sweep_dir, **kwargs)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def snap(self) -> list[dict] | None:
        """Record the file_sd file's current targets (None while there is none);
        release the gated trials it shows once the gate has opened."""
        data = read_json(self.sd_file)
        if data is not None:
            self.snapshots.append(data)
            if self.gate:
                self.gate_open = self.gate_open or len(data) >= self.gate
                for entry in data if self.gate_open else []:
                    (self.gate_dir / entry["labels"]["trial"]).touch()
        return data

    def join(self) -> SweepResult:
        while self.thread.is_alive():
            self.snap()
            time.sleep(0.01)
        assert self.result is not None
        return self.result


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_rows_in_order_failed_trial_does_not_stop_sweep_and_file_sd(tmp_path: Path) -> None:
    trials = make_trials([1, 2, 3])
    sweep = Sweep(tmp_path, trials, {"2": "fail"}, gate=1)  # every trial is seen registered
    res = sweep.join()
    assert [r["status"] for r in res.rows] == ["finished", "failed", "finished"]
    assert res.failed == 1 and not res.interrupted
    assert "exit code 1" in res.rows[1]["error"] and "boom: fake failure" in res.rows[1]["error"]

    rows = read_csv(sweep.sweep_dir / "sweep_summary.csv")
    assert [r["trial"] for r in rows] == ["1", "2", "3"]
    assert [r["status"] for r in rows] == ["finished", "failed", "finished"]
    assert list(rows[0])[:7] == ["trial", "run_id", "config_hash", "run_dir", "status", "error", "seed"]
    assert rows[0]["val_accuracy"] == "0.1" and rows[0]["epochs"] == "3" and "unlisted" not in rows[0]
    assert rows[0]["run_dir"] == f"run_001_{trials[0].config_hash}" and float(rows[1]["wall_seconds"]) > 0
    run1 = sweep.sweep_dir / rows[0]["run_dir"]
    # The runner made each trial's identity before launch: unique run_id, the trial's config hash.
    ids = [read_json(sweep.sweep_dir / r["run_dir"] / "identity.json") for r in rows]
    assert [i["config_hash"] for i in ids] == [r["config_hash"] for r in rows] == [t.config_hash for t in trials]
    assert [i["run_id"] for i in ids] == [r["run_id"] for r in rows]
    assert all(r["run_id"].startswith(r["config_hash"] + "-") for r in rows)
    cfg = yaml.safe_load((run1 / "config.yaml").read_text())
    port1 = read_json(run1 / "times.json")["port"]
    assert cfg["telemetry"]["metrics_port"] == port1 and cfg["telemetry"]["auto_port"] is True
    assert (sweep.sweep_dir / rows[1]["run_dir"] / "stdout.log").read_text().endswith("boom: fake failure\n")

    # While trial 1 ran, its endpoint (0.0.0.0 -> 127.0.0.1) was a target with
    # the three labels; later snapshots (trial 3 running) no longer have it.
    entry1 = {"targets": [f"127.0.0.1:{port1}"],
              "labels": {"sweep": "demo", "run": ids[0]["run_id"], "trial": "001", "node": "local"}}
    first = next(i for i, s in enumerate(sweep.snapshots) if entry1 in s)
    later = [s for s in sweep.snapshots[first:] if any(e["labels"]["trial"] == "003" for e in s)]
    assert later and all(entry1 not in s and len(s) == 1 for s in later)
    assert not sweep.sd_file.exists()  # cleared at sweep end


def test_parallel_two_overlaps_with_distinct_ports(tmp_path: Path) -> None:
    # Trials 1 and 2 stay up until both were seen registered at once: they overlap
    # however late the second one starts on a busy machine.
    sweep = Sweep(tmp_path, make_trials([1, 2, 3]), {"3": "diverge"}, parallel=2, gate=2)
    res = sweep.join()
    assert [r["status"] for r in res.rows] == ["finished", "finished", "diverged"]
    assert res.failed == 0  # diverging is a result, not a failure
    times = [read_json(tmp_path / "sweep" / r["run_dir"] / "times.json") for r in res.rows]
    assert times[1]["start"] < times[0]["end"] and times[0]["start"] < times[1]["end"]
    assert len({t["port"] for t in times}) == 3 and all(t["port"] > 0 for t in times)
    assert max(len(s) for s in sweep.snapshots) == 2  # both endpoints registered at once


def test_sigkilled_trial_is_failed_and_deregistered(tmp_path: Path) -> None:
    trials = make_trials([1, 2])
    sweep = Sweep(tmp_path, trials, {"1": "hang"})
    try:
        wait_for(lambda: any(e["labels"]["trial"] == "001" for e in sweep.snap() or []))
        run1 = tmp_path / "sweep" / f"run_001_{trials[0].config_hash}"
        os.kill(read_json(run1 / "pid.json")["pid"], signal.SIGKILL)
        wait_for(lambda: any(e["labels"]["trial"] == "002" for e in sweep.snap() or []))
        assert all(e["labels"]["trial"] != "001" for e in sweep.snapshots[-1])
    except BaseException:
        _kill_trials(sweep.sweep_dir)  # do not leave the 60 s fake behind
        raise
    res = sweep.join()
    assert [r["status"] for r in res.rows] == ["failed", "finished"]
    # metrics.json still said "running": that is not a final status.
    assert "killed by SIGKILL" in res.rows[0]["error"] and "'running'" in res.rows[0]["error"]


def test_metrics_port_zero_stays_disabled(tmp_path: Path) -> None:
    res = Sweep(tmp_path, make_trials([1], metrics_port=0), {}).join()
    cfg = yaml.safe_load((tmp_path / "sweep" / res.rows[0]["run_dir"] / "config.yaml").read_text())
    assert cfg["telemetry"]["metrics_port"] == 0 and cfg["telemetry"]["auto_port"] is False
    assert res.rows[0]["status"] == "finished"


def _driver(tmp: Path, n: int, modes: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    (tmp / "fake_trial.py").write_text(FAKE_TRIAL)
    (tmp / "driver.py").write_text(DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAKE_MODES": json.dumps(modes), "FAKE_SLEEP": "0.2"}
    args = [tmp / "sweep", tmp / "sd", tmp / "result.json", tmp / "fake_trial.py", n]
    proc = subprocess.Popen([sys.executable, str(tmp / "driver.py"), *map(str, args)], env=env, cwd=ROOT)
    return proc, tmp / "sweep"


def _kill_trials(sweep_dir: Path) -> None:
    """SIGKILL fakes left running by a killed driver (they run in their own session)."""
    for pid_file in sweep_dir.glob("run_*/pid.json"):
        try:
            os.kill(read_json(pid_file)["pid"], signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass


def test_crash_of_sweep_keeps_earlier_rows(tmp_path: Path) -> None:
    proc, sweep_dir = _driver(tmp_path, 3, {"3": "hang"})
    try:
        wait_for(lambda: read_json(next(sweep_dir.glob("run_003_*/pid.json"), Path("-"))))
        proc.kill()  # the sweep dies mid-trial 3
        proc.wait(10)
    finally:
        proc.kill()
        _kill_trials(sweep_dir)
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert [(r["trial"], r["status"]) for r in rows] == [("1", "finished"), ("2", "finished")]


def test_sigint_forwards_sigterm_and_starts_nothing_new(tmp_path: Path) -> None:
    proc, sweep_dir = _driver(tmp_path, 3, {"1": "hang"})
    try:
        wait_for(lambda: read_json(tmp_path / "sd" / "sweep.json"))  # trial 1 registered
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        _kill_trials(sweep_dir)
    result = read_json(tmp_path / "result.json")
    assert result["interrupted"] is True and result["failed"] == 0
    assert [r["status"] for r in result["rows"]] == ["interrupted"]
    assert [p.name[:7] for p in sweep_dir.glob("run_*")] == ["run_001"]
    assert not (tmp_path / "sd" / "sweep.json").exists()


def test_targets_file_and_summary_csv_units(tmp_path: Path) -> None:
    tf = TargetsFile(tmp_path / "sd" / "s.json")
    assert read_json(tf.path) == []
    tf.add("r1", "127.0.0.1:1", {"trial": 1})
    tf.add("r2", "127.0.0.1:2", {"trial": 2})
    tf.remove("r1")
    tf.remove("unknown")
    assert read_json(tf.path) == [{"targets": ["127.0.0.1:2"], "labels": {"trial": "2"}}]
    tf.clear()
    assert not tf.path.exists()

    path = tmp_path / "s.csv"
    SummaryCsv(path, ["lr"]).append({"trial": 1, "status": "failed", "error": "a\nb", "lr": 0.1})
    SummaryCsv(path, ["lr"]).append({"trial": 2, "status": "finished", "val_loss": 0.5, "x": 1})
    lines = path.read_text().splitlines()
    assert lines[0].startswith("trial,run_id,config_hash,run_dir,status,error,lr,val_accuracy") and len(lines) == 3
    assert read_csv(path)[0]["error"] == "a b" and read_csv(path)[1]["val_loss"] == "0.5"


def test_running_a_sweep_dir_again_keeps_each_trials_identity(tmp_path: Path) -> None:
    trials = make_trials([1, 2])
    first = Sweep(tmp_path, trials, {}).join()
    # An older trial directory (no identity.json) that has a checkpoint keeps the
    # config hash it reported as run id; one without a checkpoint gets a new id.
    legacy = tmp_path / "sweep" / first.rows[1]["run_dir"]
    (legacy / "identity.json").unlink()
    (legacy / "checkpoint.pt").write_bytes(b"")
    again = Sweep(tmp_path, trials, {}).join()
    assert again.rows[0]["run_id"] == first.rows[0]["run_id"] != trials[0].config_hash
    assert again.rows[1]["run_id"] == trials[1].config_hash == again.rows[1]["config_hash"]
    assert read_json(legacy / "identity.json") == {"run_id": trials[1].config_hash,
                                                    "config_hash": trials[1].config_hash}


def test_two_sweeps_of_one_grid_get_distinct_run_ids(tmp_path: Path) -> None:
    trials = make_trials([1])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Sweep(tmp_path / "a", trials, {}).join()
    b = Sweep(tmp_path / "b", trials, {}).join()
    assert a.rows[0]["config_hash"] == b.rows[0]["config_hash"] == trials[0].config_hash
    assert a.rows[0]["run_id"] != b.rows[0]["run_id"]
