"""Bad input through the real CLI: exit 2, one line on stderr, no traceback, nothing written.

Every case is a real ``scripts/run.py`` process; the slow part is importing
torch, so the cases run concurrently in one module-scoped fixture and each
test then checks its own result.
"""

from __future__ import annotations

import json
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from _e2e import read_json, run, run_dir_in, scrape, start, stop, wait_for
from conftest import free_port


@dataclass(frozen=True)
class Case:
    """CLI args (``{out}``, ``{dir}``, ``{port}`` are filled in) and what stderr must name."""

    args: tuple[str, ...]
    must_name: tuple[str, ...]  # key, value, what is allowed


CASES: dict[str, Case] = {
    "lr_negative": Case(("--lr", "-1"), ("lr", "-1", "greater than 0")),
    "lr_not_a_number": Case(("--lr", "abc"), ("--lr", "abc", "float")),
    "problem_type": Case(("--problem_type", "foo"),
                         ("problem_type", "foo", "spirals", "moons", "clusters", "spheres", "complex_moons")),
    "experiment": Case(("--experiment", "nope"), ("experiment", "nope", "seeds")),
    "batch_size_zero": Case(("--batch_size", "0"), ("batch_size", "0", "greater than 0")),
    "device_cuda": Case(("--device", "cuda"), ("device", "cuda", "cpu")),
    "sweep_missing": Case(("-s", "does/not/exist.yaml"), ("sweep_config", "does/not/exist.yaml", "no such file")),
    "sweep_unknown_key": Case(("-s", "{dir}/unknown.yaml"), ("bogus_key", "unknown key", "allowed:", "lr")),
    "sweep_empty_grid": Case(("-s", "{dir}/empty.yaml"), ("'lr'", "[]", "at least one value")),
    "resume_not_a_run": Case(("--resume", "{dir}/not_a_run"), ("resume", "not_a_run", "config.yaml")),
    "metrics_port_busy": Case(("--metrics_port", "{port}"), ("metrics_port", "{port}", "busy",
                                                            "--metrics_port", "--auto_port")),
}
# A run that would be short if it started (it must not).
SHORT = ("--warm_up_epochs", "1", "--adaptation_epochs", "1", "--n_samples", "200",
         "--console", "plain", "--no_tensorboard")


@dataclass
class Result:
    proc: subprocess.CompletedProcess[str]
    out: Path
    inputs: Path
    port: int


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    base = tmp_path_factory.mktemp("cli_errors")
    inputs = base / "inputs"
    inputs.mkdir()
    (inputs / "unknown.yaml").write_text("lr: [0.01]\nbogus_key: 3\n")
    (inputs / "empty.yaml").write_text("lr: []\n")
    (inputs / "not_a_run").mkdir()
    (inputs / "not_a_run" / "marker.txt").write_text("not a run\n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]

    def one(name: str) -> tuple[str, Result]:
        case = CASES[name]
        out = base / name / "out"
        args = [a.format(dir=inputs, port=port) for a in case.args]
        if name != "resume_not_a_run":  # checked before any option: the dir is not a run
            args += [*SHORT, "--output_dir", str(out)]
            if "--metrics_port" not in args:
                args += ["--metrics_port", "0"]
        return name, Result(run(args, timeout=90), out, inputs, port)

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            return dict(pool.map(one, CASES))
    finally:
        busy.close()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line(name: str, results: dict[str, Result]) -> None:
    r = results[name]
    case = CASES[name]
    assert r.proc.returncode == 2, (r.proc.returncode, r.proc.stderr[-3000:])
    assert "Traceback" not in r.proc.stderr + r.proc.stdout
    lines = r.proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: "), line
    for part in case.must_name:
        assert part.format(port=r.port) in line, (part, line)
    assert r.proc.stdout == ""
    # Validated before the run starts: nothing is written.
    assert not r.out.exists() or list(r.out.rglob("*")) == [], list(r.out.rglob("*"))


def test_resume_of_a_non_run_writes_nothing(results: dict[str, Result]) -> None:
    target = results["resume_not_a_run"].inputs / "not_a_run"
    assert sorted(p.name for p in target.iterdir()) == ["marker.txt"]


def test_help_lists_problem_types() -> None:
    r = run(["--help"], timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "--problem_type" in ln]
    assert lines, r.stdout
    assert "[spirals|moons|clusters|spheres|complex_moons]" in lines[0]
    for flag in ("--metrics_port", "--auto_port", "--resume", "--sweep_config", "--lr"):
        assert flag in r.stdout, flag


def test_auto_port_moves_to_a_free_port(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", free_port()))
    busy.listen()
    port = busy.getsockname()[1]
    out = tmp_path / "out"
    proc = None
    try:
        proc = start(["--metrics_port", str(port), "--auto_port", "--metrics_linger", "0",
                      "--warm_up_epochs", "40", "--adaptation_epochs", "0", "--console", "off",
                      "--no_tensorboard", "--output_dir", str(out)], tmp_path / "logs")
        endpoint = wait_for("endpoint.json", lambda: (d := run_dir_in(out)) and read_json(d / "endpoint.json"),
                            timeout=60, interval=0.02, proc=proc)
        assert endpoint["host"] == "127.0.0.1"
        moved = int(endpoint["port"])
        assert moved != port
        s = scrape(moved)
        assert s.one("plasticity_run_status", status="running") == 1.0
        assert s.get("plasticity_run_info")  # it is this run's endpoint
        assert proc.wait(timeout=90) == 0, proc.err()[-3000:]
    finally:
        stop(proc)
        busy.close()
    run_dir = run_dir_in(out)
    assert run_dir is not None
    doc = json.loads((run_dir / "metrics.json").read_text())
    assert doc["status"] == "finished"
    assert f"http://127.0.0.1:{moved}/metrics" in (run_dir / "run.log").read_text()
    assert not (run_dir / "endpoint.json").exists()  # removed when the endpoint closes
