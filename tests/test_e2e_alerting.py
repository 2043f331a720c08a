"""End to end with the real binaries: engine -> Prometheus -> Alertmanager -> Slack (a local mock).

One stack (module fixture) runs the shipped configs with short timings
(scrape/evaluation/group_wait/group_interval/resend-delay 1s) and a local HTTP
server standing in for Slack. A real training run diverges through the CLI's
fault drills (accuracy collapse at epoch 3, NaN loss two steps into epoch 4);
a 2-trial sweep checks file_sd discovery. The divergence -> Slack latency is
printed (``divergence -> Slack latency``) for the README.

AccuracyDrop has ``for: 5m``, which no bounded test can wait out: the test
takes the AccuracyDrop alert Prometheus holds *pending* for the diverged run
(labels and annotations exactly as Prometheus computed them) and delivers it
to Alertmanager as Prometheus would once ``for`` elapsed, together with the
same alert for a control run that did not diverge. The real inhibition rule
must then suppress the first (and no Slack message for it may arrive) while
the control one reaches Slack, which proves warnings are delivered at all.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from _e2e import ROOT, Proc, read_json, run_dir_in, start, stop, wait_for
from binaries import require_binary
from conftest import free_port

from monitoring import stack as ms
from monitoring.dashboards import panel_queries, substitute

STEPS_PER_EPOCH = 25  # 1600 training samples / batch 64
RESET_EPOCH = 3  # val accuracy 0.635 (best) -> ~0.50: AccuracyDrop's condition holds
NAN_STEP = (RESET_EPOCH + 1) * STEPS_PER_EPOCH + 2
FAST = {"scrape_interval": "1s", "evaluation_interval": "1s", "group_wait": "1s", "group_interval": "1s",
        "resend_delay": "1s"}
QUIET = ["--no_tensorboard", "--console", "off"]


@dataclass
class SlackMock:
    """Records every JSON body POSTed to it, with its arrival time."""

    url: str
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def matching(self, *needles: str) -> list[tuple[float, dict[str, Any]]]:
        """Messages whose JSON text contains every needle."""
        return [(t, m) for t, m in list(self.messages) if all(n in json.dumps(m) for n in needles)]


@contextmanager
def slack_mock() -> Iterator[SlackMock]:
    """A Slack incoming-webhook stand-in on a free loopback port, stopped on exit."""
    received: list[tuple[float, dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append((time.time(), json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield SlackMock(f"http://127.0.0.1:{server.server_address[1]}/hook", received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Stack:
    """A running local stack and what it scrapes."""

    prometheus: str
    alertmanager: str
    engine_port: int  # the static `engine` job's target port
    file_sd_dir: Path


@contextmanager
def local_stack(workdir: Path, slack_url_file: Path | None = None, file_sd_dir: Path | None = None) -> Iterator[Stack]:
    """Start the stack with the FAST timings; always stop exactly what it started."""
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    engine_port = free_port()
    file_sd = file_sd_dir or workdir / "file_sd"
    try:
        services = {s.name: s for s in ms.start_local(
            workdir, prometheus_port=free_port(), alertmanager_port=free_port(),
            engine_targets=[f"127.0.0.1:{engine_port}"], file_sd_dir=file_sd, slack_url_file=slack_url_file,
            ready_timeout=30, **FAST)}
        prom = services["prometheus"].url
        # Prometheus hands discovered targets to its scrapers at most every 5 s: wait for the
        # engine target's first (failed) scrape, so a run is scraped from its very start.
        wait_for("the engine target scraped", lambda: query(prom, 'up{job="engine"}'), timeout=20, interval=0.2)
        yield Stack(prom, services["alertmanager"].url, engine_port, file_sd)
    finally:
        ms.stop_local(workdir)


def get_json(url: str, path: str, **params: str) -> Any:
    """GET ``url+path?params`` and decode the JSON answer."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}{path}{query}", timeout=5) as resp:
        return json.loads(resp.read())


def query(prometheus: str, expr: str, **params: str) -> list[dict[str, Any]]:
    """Result of an instant PromQL query (raises unless Prometheus says success)."""
    doc = get_json(prometheus, "/api/v1/query", query=expr, **params)
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def prometheus_alerts(prometheus: str, name: str, run_id: str) -> list[dict[str, Any]]:
    """Alerts (pending or firing) Prometheus holds for ``name`` and ``run_id``."""
    alerts = get_json(prometheus, "/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == name and a["labels"].get("run_id") == run_id]


def am_alerts(alertmanager: str, name: str) -> list[dict[str, Any]]:
    """Alertmanager's view of the alerts named ``name``, silenced and inhibited ones included."""
    return list(get_json(alertmanager, "/api/v2/alerts", filter=f'alertname="{name}"'))


def post_alerts(alertmanager: str, alerts: list[dict[str, Any]]) -> None:
    """Deliver alerts to Alertmanager the way Prometheus does (POST /api/v2/alerts)."""
    req = urllib.request.Request(f"{alertmanager}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


def divergence_time(run_dir: Path) -> float:
    """Unix time of the trainer's "non-finite loss" log line (millisecond resolution, local time)."""
    for line in (run_dir / "run.log").read_text().splitlines():
        if "non-finite loss" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError("no non-finite loss line in run.log")


def rfc3339(stamp: str) -> float:
    """Unix time of an RFC 3339 timestamp as Prometheus writes it (nanoseconds, ``Z``)."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=timezone.utc).timestamp() + float(f"0.{frac or 0}")


def production_latency() -> tuple[float, float]:
    """(typical, worst case) seconds from a divergence to the Slack page with the shipped configs.

    Up to one engine scrape interval until Prometheus sees the diverged run,
    up to one evaluation interval until LossNonFinite (plus its ``for``, none
    today) fires, then the critical route's ``group_wait``; typical = half of
    each wait that depends on the phase, delivery not counted.
    """
    prom, am = yaml.safe_load(ms.PROMETHEUS_YML.read_text()), yaml.safe_load(ms.ALERTMANAGER_YML.read_text())
    engine = next(j for j in prom["scrape_configs"] if j["job_name"] == "engine")
    scrape = ms.seconds(engine.get("scrape_interval", prom["global"]["scrape_interval"]))
    evaluation = ms.seconds(prom["global"]["evaluation_interval"])
    rules = [r for path in sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
             for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    hold = ms.seconds(next(r for r in rules if r.get("alert") == "LossNonFinite").get("for", "0s"))
    route = next(r for r in am["route"].get("routes", []) if 'severity="critical"' in r.get("matchers", []))
    wait = ms.seconds(route.get("group_wait", am["route"].get("group_wait", "30s")))
    return (scrape + evaluation) / 2 + hold + wait, scrape + evaluation + hold + wait


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackMock]:
    with slack_mock() as mock:
        yield mock


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, slack: SlackMock) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e_stack")
    url_file = tmp / "slack_webhook_url"
    url_file.write_text(slack.url)  # the value alone, as secrets/README.md says
    with local_stack(tmp / "stack", url_file, file_sd_dir=tmp / "sweep_out" / "file_sd") as s:
        yield s


def test_divergence_pages_slack_and_inhibits_the_accuracy_drop(stack: Stack, slack: SlackMock,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    proc: Proc | None = None
    try:
        proc = start(["--warm_up_epochs", "5", "--adaptation_epochs", "5", *QUIET, "--output_dir", str(out),
                      "--metrics_port", str(stack.engine_port), "--metrics_hold", "30",
                      "--fault_reset_epoch", str(RESET_EPOCH), "--fault_nan_step", str(NAN_STEP)], tmp_path / "logs")
        run_dir = wait_for("the run dir", lambda: run_dir_in(out), timeout=60, proc=proc)
        run_id = wait_for("run_id", lambda: (read_json(run_dir / "metrics.json") or {}).get("run_id"), 60, proc=proc)
        prom = stack.prometheus

        # Prometheus scraped the run: the target is up and the engine's series carry its run_id.
        wait_for("up == 1", lambda: query(prom, 'up{job="engine"} == 1'), timeout=30, proc=proc)
        wait_for("the run's series", lambda: query(prom, f'plasticity_run_info{{job="engine", run_id="{run_id}"}}'),
                 timeout=10, proc=proc)
        wait_for("the diverged status", lambda: query(
            prom, f'plasticity_run_status{{run_id="{run_id}", status="diverged"}} == 1'), timeout=30, proc=proc)

        # The critical alert fires in Prometheus and reaches Slack, naming the run.
        firing = wait_for("LossNonFinite firing", lambda: [
            a for a in prometheus_alerts(prom, "LossNonFinite", run_id) if a["state"] == "firing"], 30, proc=proc)
        assert firing[0]["labels"]["severity"] == "critical"
        assert query(prom, f'ALERTS{{alertname="LossNonFinite", run_id="{run_id}", alertstate="firing"}}')
        # The dashboards' alert panels (empty for a healthy run) show it.
        alert_panels = [(t, e) for path in sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
                        for _u, t, e in panel_queries(json.loads(path.read_text())) if "ALERTS" in e]
        assert alert_panels
        for title, expr in alert_panels:
            result = query(prom, substitute(expr, {"run": run_id, "job": "engine"}))
            assert result and all(float(r["value"][1]) >= 1 for r in result), (title, result)
        page = wait_for("the Slack page", lambda: slack.matching(run_id, "LossNonFinite"), timeout=30, proc=proc)
        arrived, message = page[0]
        assert {"text", "attachments", "blocks"} & set(message), message
        body = json.dumps(message)  # rendered by the shipped template: the run's dashboard and runbook
        assert "monitoring/runbook.md#lossnonfinite" in body and f"plasticity-overview?var-run={run_id}" in body, body
        diverged_at = divergence_time(run_dir)
        latency, active_after = arrived - diverged_at, rfc3339(firing[0]["activeAt"]) - diverged_at
        assert 0 < active_after < latency < 30, (active_after, latency)

        # AccuracyDrop is pending in Prometheus for the same run (see the module docstring).
        pending = wait_for("AccuracyDrop for the run", lambda: prometheus_alerts(prom, "AccuracyDrop", run_id),
                           timeout=30, proc=proc)[0]
        assert pending["labels"]["severity"] == "warning"
        control_id = "c0ntr0l0000"
        now = datetime.now(timezone.utc)
        window = {"startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=10)).isoformat()}
        post_alerts(stack.alertmanager, [
            {"labels": pending["labels"], "annotations": pending["annotations"], **window},
            {"labels": {**pending["labels"], "run_id": control_id, "instance": "127.0.0.1:1"},
             "annotations": {k: v.replace(run_id, control_id) for k, v in pending["annotations"].items()}, **window},
        ])
        page_fp = wait_for("LossNonFinite in Alertmanager", lambda: [
            a["fingerprint"] for a in am_alerts(stack.alertmanager, "LossNonFinite")
            if a["labels"].get("run_id") == run_id], timeout=10)[0]

        def drop(rid: str) -> dict[str, Any] | None:
            return next((a for a in am_alerts(stack.alertmanager, "AccuracyDrop") if a["labels"]["run_id"] == rid), None)

        inhibited = wait_for("the inhibited AccuracyDrop", lambda: (
            (a := drop(run_id)) is not None and a["status"]["state"] == "suppressed" and a), timeout=10)
        assert inhibited["status"]["inhibitedBy"] == [page_fp]
        assert drop(control_id)["status"]["state"] == "active"  # type: ignore[index]
        wait_for("the control run's AccuracyDrop in Slack", lambda: slack.matching(control_id, "AccuracyDrop"),
                 timeout=15)
        time.sleep(2)  # two more group intervals: a message for the inhibited alert would be out by now
        assert slack.matching(run_id, "AccuracyDrop") == []
        assert drop(run_id)["status"]["state"] == "suppressed"  # type: ignore[index]
        typical, worst = production_latency()
        with capsys.disabled():
            print(f"\ndivergence -> Slack latency: {latency:.2f} s (alert active in Prometheus after "
                  f"{active_after:.2f} s; scrape, evaluation, group_wait 1 s; run {run_id}); with the shipped "
                  f"intervals: typical {typical:.1f} s, worst case {worst:.1f} s")
    finally:
        stop(proc)


def test_sweep_trials_are_discovered_through_file_sd(stack: Stack, tmp_path: Path) -> None:
    spec = tmp_path / "e2e.yaml"
    spec.write_text("sweep:\n  name: e2e\n  parallel: 2\nlr: [0.003, 0.01]\n")
    out = stack.file_sd_dir.parent  # the sweep writes OUTPUT_DIR/file_sd, which the stack reads
    proc: Proc | None = None
    try:
        proc = start(["-s", str(spec), "--output_dir", str(out), "--warm_up_epochs", "3", "--adaptation_epochs", "3",
                      *QUIET, "--metrics_hold", "20"], tmp_path / "logs")

        def trials() -> dict[str, dict[str, str]]:
            targets = get_json(stack.prometheus, "/api/v1/targets", state="active")["data"]["activeTargets"]
            found = {t["labels"]["trial"]: t["labels"] for t in targets
                     if t["labels"].get("job") == "engine_trials" and t["labels"].get("sweep") == "e2e"
                     and t["health"] == "up"}
            return found if len(found) == 2 else {}

        found = wait_for("both trials scraped", trials, timeout=45, interval=0.2, proc=proc)
        assert sorted(found) == ["001", "002"]  # trials are numbered from 1
        def run_info() -> list[dict[str, Any]]:
            result = query(stack.prometheus, 'plasticity_run_info{job="engine_trials", sweep="e2e"}')
            return result if len(result) == 2 else []

        series = wait_for("both trials' series", run_info, timeout=15, proc=proc)
        for s in series:  # target labels attached to the engine's own series; run is the run_id
            labels = s["metric"]
            assert labels["run"] == labels["run_id"] == found[labels["trial"]]["run"]
    finally:
        if proc is not None and proc.poll() is None:
            proc.popen.terminate()  # the sweep forwards SIGTERM to its trials and waits for them
            try:
                proc.wait(timeout=20)
            except Exception:  # noqa: BLE001 - last resort
                stop(proc)
