"""The local monitoring stack: rendered configs equal the shipped ones but for
addresses, paths and timings; ``stack up|status|down`` run real Prometheus and
Alertmanager and stop exactly what they started; bad input exits 2 in one line.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from _e2e import ROOT, run, wait_for
from binaries import require_binary
from conftest import free_port

from monitoring import stack as ms
from monitoring.stack_config import _routes

MISSING = object()
# Every place render_configs may change, as a path pattern ([] = any list index).
ALLOWED_PROMETHEUS = re.compile(
    r"^\.global\.(scrape_interval|scrape_timeout|evaluation_interval)$"
    r"|^\.scrape_configs\[\]\.(scrape_interval|scrape_timeout|static_configs\[\]\.targets(\[\])?"
    r"|file_sd_configs\[\]\.files(\[\])?)$"
    r"|^\.rule_files(\[\])?$|^\.alerting\.alertmanagers\[\]\.static_configs\[\]\.targets(\[\])?$")
ALLOWED_ALERTMANAGER = re.compile(
    r"^\.global\.slack_api_url_file$|^\.receivers\[\]\.slack_configs\[\]\.api_url_file$"
    r"|^\.route(\.routes\[\])*\.(group_wait|group_interval)$|^\.templates(\[\])?$")


def diff_paths(a: Any, b: Any, path: str = "") -> set[str]:
    """Paths (list indices written ``[]``) at which two YAML documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {p for k in a.keys() | b.keys() for p in diff_paths(a.get(k, MISSING), b.get(k, MISSING), f"{path}.{k}")}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return {p for x, y in zip(a, b) for p in diff_paths(x, y, f"{path}[]")}
    return set() if a == b else {path}


def forbidden_changes(shipped: dict[str, Any], rendered: dict[str, Any], allowed: re.Pattern[str]) -> list[str]:
    """Paths changed by rendering that are not addresses, paths or timings."""
    return sorted(p for p in diff_paths(shipped, rendered) if not allowed.match(p))


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.fixture
def rendered(tmp_path: Path) -> ms.RenderedConfigs:
    slack = tmp_path / "slack_url"
    slack.write_text("http://127.0.0.1:1/hook")
    return ms.render_configs(tmp_path / "work", prometheus_port=19090, alertmanager_port=19093,
                             scrape_interval="1s", evaluation_interval="2s", group_wait="3s", group_interval="4s",
                             engine_targets=["127.0.0.1:18000", "127.0.0.1:18001"],
                             file_sd_dir=tmp_path / "sd", slack_url_file=slack)


def test_render_changes_only_addresses_paths_and_timings(rendered: ms.RenderedConfigs, tmp_path: Path) -> None:
    prom, am = _load(rendered.prometheus), _load(rendered.alertmanager)
    assert forbidden_changes(_load(ms.PROMETHEUS_YML), prom, ALLOWED_PROMETHEUS) == []
    assert forbidden_changes(_load(ms.ALERTMANAGER_YML), am, ALLOWED_ALERTMANAGER) == []
    shipped_am = _load(ms.ALERTMANAGER_YML)
    assert am["inhibit_rules"] == shipped_am["inhibit_rules"]
    assert am["receivers"] != shipped_am["receivers"]  # the Slack URL files did change...
    # ...and the values did change to the loopback ones.
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["engine"]["static_configs"][0]["targets"] == ["127.0.0.1:18000", "127.0.0.1:18001"]
    assert jobs["prometheus"]["static_configs"][0]["targets"] == ["127.0.0.1:19090"]
    assert jobs["alertmanager"]["static_configs"][0]["targets"] == ["127.0.0.1:19093"]
    assert jobs["engine_trials"]["file_sd_configs"][0]["files"] == [str(tmp_path / "sd" / "*.json")]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19093"]
    assert prom["global"]["scrape_interval"] == "1s" and prom["global"]["evaluation_interval"] == "2s"
    for job in jobs.values():  # Prometheus rejects a timeout longer than the interval
        assert ms.seconds(job.get("scrape_timeout", prom["global"]["scrape_timeout"])) <= 1
    assert all(r["group_wait"] == "3s" and r["group_interval"] == "4s"
               for r in _routes(am["route"]) if "group_wait" in r or r is am["route"])
    slack_files = [c["api_url_file"] for r in am["receivers"] for c in r.get("slack_configs", [])
                   if "api_url_file" in c] + [am.get("global", {}).get("slack_api_url_file")]
    assert set(filter(None, slack_files)) == {str(tmp_path / "slack_url")}
    # Rules and templates are the repo's own files, not copies.
    rule_files = sorted(p for pattern in prom["rule_files"] for p in Path("/").glob(pattern.lstrip("/")))
    assert rule_files == sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
    templates = sorted(p for pattern in am["templates"] for p in Path("/").glob(pattern.lstrip("/")))
    assert templates == sorted((ROOT / "alertmanager" / "templates").glob("*.tmpl")) != []


def test_render_keeps_production_timings_unless_overridden(tmp_path: Path) -> None:
    cfg = ms.render_configs(tmp_path, prometheus_port=1, alertmanager_port=2, engine_targets=["127.0.0.1:3"],
                            file_sd_dir=tmp_path, slack_url_file=tmp_path / "s")
    changed = diff_paths(_load(ms.PROMETHEUS_YML), _load(cfg.prometheus)) | diff_paths(
        _load(ms.ALERTMANAGER_YML), _load(cfg.alertmanager))
    assert not [p for p in changed if re.search(r"interval|timeout|group_wait", p)], changed


def test_the_comparison_catches_a_changed_route_rule_or_inhibition(rendered: ms.RenderedConfigs) -> None:
    am, prom = _load(rendered.alertmanager), _load(rendered.prometheus)
    am["inhibit_rules"][0]["equal"] = ["instance"]
    am["route"]["routes"][0]["receiver"] = "someone-else"
    prom["scrape_configs"][0]["honor_labels"] = True
    assert forbidden_changes(_load(ms.ALERTMANAGER_YML), am, ALLOWED_ALERTMANAGER) == [
        ".inhibit_rules[].equal", ".route.routes[].receiver"]
    assert forbidden_changes(_load(ms.PROMETHEUS_YML), prom, ALLOWED_PROMETHEUS) == [".scrape_configs[].honor_labels"]


def test_rendered_configs_pass_promtool_and_amtool(rendered: ms.RenderedConfigs) -> None:
    for cmd in ([require_binary("promtool"), "check", "config", str(rendered.prometheus)],
                [require_binary("amtool"), "check-config", str(rendered.alertmanager)]):
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    """Running (not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def test_stack_up_status_down_through_the_cli(tmp_path: Path) -> None:
    prometheus = require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    workdir, pport, aport = tmp_path / "stack", free_port(), free_port()
    pids: list[int] = []
    decoy: subprocess.Popen[bytes] | None = None
    try:
        slack = tmp_path / "slack_url"  # explicit: never a real webhook from the environment
        slack.write_text("http://127.0.0.1:9/nowhere")
        up = run(["stack", "up", "--no_docker", "--workdir", str(workdir), "--prometheus_port", str(pport),
                  "--alertmanager_port", str(aport), "--file_sd_dir", str(tmp_path / "sd"),
                  "--slack_url_file", str(slack)])
        state = json.loads((workdir / ms.STATE_FILE).read_text()) if (workdir / ms.STATE_FILE).exists() else {}
        pids = [s["pid"] for s in state.get("services", [])]
        assert up.returncode == 0, up.stderr
        assert f"http://127.0.0.1:{pport}" in up.stdout and f"http://127.0.0.1:{aport}" in up.stdout
        assert {s["name"]: s["port"] for s in state["services"]} == {"prometheus": pport, "alertmanager": aport}
        assert all(s["start_ticks"] > 0 and s["started_at"] > 0 for s in state["services"])
        for port in (pport, aport):
            assert _get(f"http://127.0.0.1:{port}/-/ready") == 200
        assert all(_alive(pid) for pid in pids)

        # A real Prometheus whose command line differs from the stack's only in port and data dir:
        # whatever matches processes by name or command line would stop it too.
        decoy = subprocess.Popen([prometheus, f"--config.file={workdir / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={tmp_path / 'decoy-data'}",
                                  f"--web.listen-address=127.0.0.1:{free_port()}", "--web.enable-lifecycle"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        status = run(["stack", "status", "--workdir", str(workdir)])
        assert status.returncode == 0, status.stdout + status.stderr
        lines = status.stdout.splitlines()
        for name, pid, port in zip(("alertmanager", "prometheus"), pids, (aport, pport)):
            assert any(ln.startswith(name) and "ready" in ln and f"pid {pid}" in ln and str(port) in ln
                       for ln in lines), status.stdout
        again = run(["stack", "up", "--no_docker", "--workdir", str(workdir), "--prometheus_port", str(free_port()),
                     "--alertmanager_port", str(free_port())])
        assert again.returncode == 2 and "already running" in again.stderr, again.stderr

        down = run(["stack", "down", "--workdir", str(workdir)])
        assert down.returncode == 0, down.stderr
        assert all(f"pid {pid}" in down.stdout for pid in pids), down.stdout
        wait_for("the stack's processes to end", lambda: not any(_alive(p) for p in pids), timeout=15)
        assert decoy.poll() is None, "stack down killed a process it did not start"
        assert not (workdir / ms.STATE_FILE).exists()
        after = run(["stack", "status", "--workdir", str(workdir)])
        assert after.returncode == 1 and "no stack" in after.stdout
    finally:
        for pid in pids:  # only if the test failed before `stack down` did its job
            if _alive(pid):
                os.kill(pid, 9)
        if decoy is not None:
            decoy.kill()
            decoy.wait(timeout=10)


def test_stop_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks, cmdline = ms._proc_identity(proc.pid) or (0, ())
        svc = ms.Service("prometheus", 1, "http://127.0.0.1:1", pid=proc.pid, start_ticks=ticks + 1, cmdline=cmdline)
        ms.write_state(tmp_path, "local", [svc])
        assert ms.stop_local(tmp_path) == []  # started at another time: not the recorded process
        assert proc.poll() is None
        ms.write_state(tmp_path, "local", [ms.Service(**{**svc.__dict__, "start_ticks": ticks})])
        assert [s.pid for s in ms.stop_local(tmp_path)] == [proc.pid]  # the same check does match it
        assert not _alive(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        base = ["stack", "up", "--no_docker", "--alertmanager_port", str(free_port())]
        cases = {
            "busy": (base + ["--workdir", str(tmp_path / "a"), "--prometheus_port", str(port)], {}),
            # No binary on PATH (only the interpreter's own directory).
            "missing": (base + ["--workdir", str(tmp_path / "b"), "--prometheus_port", str(free_port())],
                        {"PATH": str(Path(sys.executable).parent)}),
            "slack": (base + ["--workdir", str(tmp_path / "c"), "--prometheus_port", str(free_port()),
                              "--slack_url_file", str(tmp_path / "nope")], {}),
            "interval": (base + ["--workdir", str(tmp_path / "d"), "--prometheus_port", str(free_port()),
                                 "--scrape_interval", "soon"], {}),
        }
        with ThreadPoolExecutor(len(cases)) as pool:
            futures = {k: pool.submit(run, args, 60, **env) for k, (args, env) in cases.items()}
            results = {k: f.result() for k, f in futures.items()}
    assert f"port {port} on 127.0.0.1 is in use" in _one_error_line(results["busy"])
    assert "apt-get install prometheus prometheus-alertmanager" in _one_error_line(results["missing"])
    assert str(tmp_path / "nope") in _one_error_line(results["slack"])
    assert "'soon'" in _one_error_line(results["interval"])
    for sub in "abcd":
        assert not (tmp_path / sub / ms.STATE_FILE).exists()


class FakeContainers:
    """Docker SDK stand-in: each "container" is the real binary run locally with the container's command."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, list[str], dict[str, Any]]] = []
        self.boxes: dict[str, Any] = {}

    def run(self, image: str, command: list[str], **kw: Any) -> Any:
        self.runs.append((image, command, kw))
        binary = ms.find_binary("alertmanager" if "alertmanager" in image else "prometheus")
        proc = subprocess.Popen([binary, *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        box = type("Box", (), {"id": f"fake{len(self.runs)}", "status": "running", "proc": proc, "removed": False,
                               "stop": lambda self, timeout: (self.proc.terminate(), self.proc.wait(timeout)),
                               "remove": lambda self: setattr(self, "removed", True)})()
        self.boxes[box.id] = box
        return box

    def get(self, box_id: str) -> Any:
        return self.boxes[box_id]


def test_docker_mode_runs_the_compose_images_with_the_same_configs(tmp_path: Path) -> None:
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    client = type("Client", (), {"containers": FakeContainers()})()
    workdir, pport, aport = tmp_path / "stack", free_port(), free_port()
    try:
        services = ms.start_docker(workdir, client, prometheus_port=pport, alertmanager_port=aport,
                                   file_sd_dir=tmp_path / "sd", ready_timeout=30)
        assert [(s.name, s.port, s.container) for s in services] == [
            ("alertmanager", aport, "fake1"), ("prometheus", pport, "fake2")]
        images = {image for image, _cmd, _kw in client.containers.runs}
        assert images == set(ms.compose_images().values())
        assert all(tag.split(":")[1] != "latest" for tag in images)
        for _image, cmd, kw in client.containers.runs:
            assert kw["network_mode"] == "host" and kw["detach"] is True
            assert kw["user"] == f"{os.getuid()}:{os.getgid()}"
            config = next(a.split("=", 1)[1] for a in cmd if a.startswith("--config.file="))
            assert Path(config).parent == workdir.resolve() and kw["volumes"][str(workdir.resolve())]["mode"] == "rw"
            for repo_dir in ("prometheus", "alertmanager"):
                assert kw["volumes"][str(ROOT / repo_dir)] == {"bind": str(ROOT / repo_dir), "mode": "ro"}
        assert _get(f"http://127.0.0.1:{pport}/-/ready") == _get(f"http://127.0.0.1:{aport}/-/ready") == 200
        assert json.loads((workdir / ms.STATE_FILE).read_text())["mode"] == "docker"
        assert [s.container for s in ms.stop_docker(workdir, client)] == ["fake1", "fake2"]
        assert all(box.removed and box.proc.poll() is not None for box in client.containers.boxes.values())
        assert not (workdir / ms.STATE_FILE).exists()
    finally:
        for box in client.containers.boxes.values():
            if box.proc.poll() is None:
                box.proc.kill()
                box.proc.wait(timeout=10)
