"""Alertmanager config: amtool checks, routing per severity, and the Slack
messages a real Alertmanager renders from the repo's templates (posted to a
local recorder standing in for Slack), including the divergence inhibition."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from binaries import (
    ALERTMANAGER_YML,
    ROOT,
    RULES_DIR,
    TEMPLATES_DIR,
    require_binary,
    start,
    stop,
)
from conftest import free_port

from monitoring.stack_config import render_configs

RECEIVER = {"critical": "slack-critical", "warning": "slack-warning"}


def _alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for f in sorted(RULES_DIR.glob("*.yml"))
            for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"] if "alert" in r}


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("amtool"), *args], check=False, capture_output=True,
                          text=True, timeout=30)


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    """alertmanager.yml with a local secret file holding a (fake) webhook URL."""
    secret = tmp_path / "slack_webhook_url"
    secret.write_text("http://127.0.0.1:9/slack\n")
    return render_configs(tmp_path, prometheus_port=9090, alertmanager_port=9093, engine_targets=[],
                          file_sd_dir=tmp_path / "file_sd", slack_url_file=secret).alertmanager


def test_check_config_shipped_and_rendered(rendered: Path) -> None:
    for path in (ALERTMANAGER_YML, rendered):
        res = _amtool("check-config", str(path))
        assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr


def test_production_settings() -> None:
    """Secrets from files only, resolved messages, grouping per alert and run,
    sane production timings, the divergence inhibition."""
    text = ALERTMANAGER_YML.read_text()
    assert "hooks.slack.com" not in text and "api_url:" not in text
    cfg = yaml.safe_load(text)
    assert cfg["templates"] == ["/etc/alertmanager/templates/*.tmpl"]
    assert list(TEMPLATES_DIR.glob("*.tmpl")), "no message templates in the repo"
    names = {r["name"] for r in cfg["receivers"]}
    assert set(RECEIVER.values()) <= names
    for receiver in cfg["receivers"]:
        assert receiver.get("slack_configs"), receiver["name"]
        for slack in receiver["slack_configs"]:
            assert slack["api_url_file"].startswith("/run/secrets/")
            assert slack["send_resolved"] is True
    route = cfg["route"]
    assert {"alertname", "run_id"} <= set(route["group_by"])
    from binaries import duration_seconds as secs
    for r in [route, *route["routes"]]:
        wait = secs(r.get("group_wait", route["group_wait"]))
        interval = secs(r.get("group_interval", route["group_interval"]))
        repeat = secs(r.get("repeat_interval", route["repeat_interval"]))
        assert 5 <= wait <= 60 and 60 <= interval <= 600 and 3600 <= repeat <= 86400, r
    critical = next(r for r in route["routes"] if r["receiver"] == "slack-critical")
    assert secs(critical["group_wait"]) <= 10  # pages go out fast
    inhibit = [r for r in cfg["inhibit_rules"] if 'alertname="AccuracyDrop"' in r["target_matchers"]]
    assert inhibit and "run_id" in inhibit[0]["equal"]
    assert 'severity="critical"' in inhibit[0]["source_matchers"]
    assert any("LossNonFinite" in m and "LossDiverging" in m for m in inhibit[0]["source_matchers"])


#: Source alert -> the alerts of the same run (run_id and sweep) it mutes.
EXPECTED_INHIBITIONS = {
    # A divergence or crash explains the run's accuracy drop.
    "LossNonFinite": {"AccuracyDrop", "LossDiverging", "GradientNormExplosion"},
    "LossDiverging": {"AccuracyDrop"},
    "RunFailed": {"AccuracyDrop"},
    # An explosion comes first and stands for the NaN it ends in.
    "LossExploding": {"AccuracyDrop", "LossDiverging", "GradientNormExplosion", "LossNonFinite"},
    "SeedDriftCritical": {"SeedDriftHigh"},
    # Structural changes that keep hurting explain the accuracy drop they cause.
    "StructuralChangesHurting": {"AccuracyDrop"},
    # A perplexity jump right after a change is the page for the harm that
    # StructuralChangesHurting measures later (never the other way round).
    "PerplexityJumpAfterChange": {"AccuracyDrop", "StructuralChangesHurting"},
    # A heads round kept past its quality limit is the page for the harm that the
    # perplexity jump (next evaluation) and StructuralChangesHurting (settle window)
    # measure again (never the other way round).
    "HeadsPrunedPastQuality": {"PerplexityJumpAfterChange", "StructuralChangesHurting"},
}
_MATCHER_RE = re.compile(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"(.*)"\s*')


def _matches(matchers: list[str], labels: dict[str, str]) -> bool:
    """Alertmanager's matching (regexes anchored, a missing label is empty)."""
    for matcher in matchers:
        m = _MATCHER_RE.fullmatch(matcher)
        assert m, f"matcher {matcher!r} not understood by this test"
        name, op, value = m.groups()
        have = labels.get(name, "")
        if not {"=": have == value, "!=": have != value, "=~": re.fullmatch(value, have) is not None,
                "!~": re.fullmatch(value, have) is None}[op]:
            return False
    return True


def _inhibitions() -> set[tuple[str, str]]:
    """(source, target) pairs of alert names: a firing source mutes the target (given `equal`)."""
    rules = yaml.safe_load(ALERTMANAGER_YML.read_text())["inhibit_rules"]
    labels = {name: {"alertname": name, **rule["labels"]} for name, rule in _alerts().items()}
    return {(src, dst) for r in rules for src, sl in labels.items() for dst, dl in labels.items()
            if src != dst and _matches(r["source_matchers"], sl) and _matches(r["target_matchers"], dl)}


def test_inhibitions_between_alerts() -> None:
    """Which alert mutes which (evaluated on the rules' alert names and
    severities): as intended, per run, never circular (two alerts muting
    each other would both stay silent), and a warning never mutes a page."""
    pairs = _inhibitions()
    assert pairs == {(src, dst) for src, dsts in EXPECTED_INHIBITIONS.items() for dst in dsts}
    for rule in yaml.safe_load(ALERTMANAGER_YML.read_text())["inhibit_rules"]:
        assert {"run_id", "sweep"} <= set(rule["equal"]), rule
    muted_by: dict[str, set[str]] = {}
    for src, dst in pairs:
        muted_by.setdefault(src, set()).add(dst)
    for start_name in muted_by:
        seen, todo = set(), list(muted_by[start_name])
        while todo:
            name = todo.pop()
            assert name != start_name, f"{start_name} mutes itself through {sorted(seen)}"
            if name not in seen:
                seen.add(name)
                todo.extend(muted_by.get(name, ()))
    severity = {name: rule["labels"]["severity"] for name, rule in _alerts().items()}
    assert not {(s, d) for s, d in pairs if severity[s] == "warning" and severity[d] == "critical"}


@pytest.mark.parametrize("severity", sorted(RECEIVER))
def test_routes_by_severity(rendered: Path, severity: str) -> None:
    for name, rule in _alerts().items():
        if rule["labels"]["severity"] != severity:
            continue
        res = _amtool("config", "routes", "test", f"--config.file={rendered}",
                      f"severity={severity}", f"alertname={name}", "run_id=r1", "sweep=s")
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == [RECEIVER[severity]], (name, res.stdout)


def test_every_alert_severity_is_routed() -> None:
    assert {r["labels"]["severity"] for r in _alerts().values()} <= set(RECEIVER)
    assert {r["labels"]["severity"] for r in _alerts().values()} == set(RECEIVER)


def test_unlabelled_alert_falls_back_to_warning(rendered: Path) -> None:
    res = _amtool("config", "routes", "test", f"--config.file={rendered}", "alertname=Other")
    assert res.stdout.split() == ["slack-warning"], res.stdout + res.stderr


# -- a real Alertmanager posting to a local Slack stand-in --------------------

class _Slack:
    """Records the JSON bodies POSTed to it, as Slack's webhook would receive them."""

    def __init__(self, port: int) -> None:
        self.posts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.posts.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                hits = [p for p in self.posts if pred(p)]
            if hits:
                return hits[0]
            time.sleep(0.2)
        raise AssertionError(f"no matching Slack post within {timeout}s; got {self.posts}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _alert(name: str, run_id: str, sweep: str | None, ends: datetime | None = None) -> dict[str, Any]:
    rule = _alerts()[name]
    labels = {"alertname": name, "severity": rule["labels"]["severity"], "run_id": run_id,
              "job": "engine_trials" if sweep else "engine", "instance": "127.0.0.1:9101"}
    where = f"Run {run_id}"
    if sweep:
        labels |= {"sweep": sweep, "run": run_id, "trial": "001"}
        where += f" (sweep {sweep}, trial 001)"
    now = datetime.now(timezone.utc)
    alert = {"labels": labels, "startsAt": (now - timedelta(seconds=30)).isoformat(),
             "annotations": {"summary": f"{name} in {run_id}", "description": f"{where}: test",
                             "value": f"value-of-{name}", "runbook_url": rule["annotations"]["runbook_url"]},
             "generatorURL": "http://127.0.0.1:9090/graph"}
    if ends:
        alert["endsAt"] = ends.isoformat()
    return alert


def _text(post: dict[str, Any]) -> str:
    return json.dumps(post["attachments"][0])


class _Alertmanager:
    """A real Alertmanager (shipped config, 1s group timings) posting to a :class:`_Slack`."""

    def __init__(self, base: str, slack: _Slack) -> None:
        self.base, self.slack = base, slack

    def post(self, alerts: list[dict[str, Any]]) -> None:
        req = urllib.request.Request(f"{self.base}/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=5).close()

    def alerts(self, query: str = "") -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.base}/alerts{query}", timeout=5) as r:
            return list(json.loads(r.read()))


@contextmanager
def _alertmanager(tmp_path: Path) -> Iterator[_Alertmanager]:
    binary = require_binary("prometheus-alertmanager")
    slack_port, am_port = free_port(), free_port()
    slack = _Slack(slack_port)
    secret = tmp_path / "slack_webhook_url"
    secret.write_text(f"http://127.0.0.1:{slack_port}/slack\n")
    # repeat_interval stays the shipped one (4h or 12h): like 1h, far longer than this test.
    cfg = render_configs(tmp_path, prometheus_port=free_port(), alertmanager_port=am_port, engine_targets=[],
                         file_sd_dir=tmp_path / "file_sd", slack_url_file=secret,
                         group_wait="1s", group_interval="1s").alertmanager
    proc = start([binary, f"--config.file={cfg}", f"--storage.path={tmp_path / 'data'}",
                   f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
                  tmp_path / "alertmanager.log")
    base = f"http://127.0.0.1:{am_port}/api/v2"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{base}/status", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "alertmanager.log").read_text()
                assert time.monotonic() < deadline, "Alertmanager did not come up"
                time.sleep(0.2)
        yield _Alertmanager(base, slack)
    finally:
        stop(proc)
        slack.close()


def test_real_alertmanager_messages_and_inhibition(tmp_path: Path) -> None:
    with _alertmanager(tmp_path) as am:
        slack, post = am.slack, am.post
        # The divergence first (as in a real run, where AccuracyDrop needs 5
        # minutes): the inhibitor learns about a source asynchronously, and an
        # accuracy drop posted in the same batch could be flushed before that
        # on a busy machine.
        post([_alert("LossNonFinite", "r1", "s")])
        page = slack.wait_for(lambda p: "LossNonFinite" in _text(p), 20)
        post([_alert("AccuracyDrop", "r1", "s"), _alert("AccuracyDrop", "r2", None)])
        att = page["attachments"][0]
        assert att["title"] == "[FIRING:1] LossNonFinite · run r1 · sweep s"
        assert att["color"] == "danger" and "<!channel>" in att["pretext"]
        assert att["title_link"] == "http://localhost:3000/d/plasticity-overview?var-run=r1&var-sweep=s"
        for part in ("*Run:* `r1`", "*Sweep:* `s`", "*Trial:* `001`", "*Value:* value-of-LossNonFinite",
                     "Run r1 (sweep s, trial 001): test",
                     "<http://localhost:3000/d/plasticity-overview?var-run=r1&var-sweep=s|",
                     "`monitoring/runbook.md#lossnonfinite`"):
            assert part in att["text"], (part, att["text"])

        info = slack.wait_for(lambda p: "AccuracyDrop" in _text(p), 20)
        att = info["attachments"][0]
        assert att["title"] == "[FIRING:1] AccuracyDrop · run r2"
        assert att["color"] == "warning" and "<!channel>" not in json.dumps(att)
        assert "var-run=r2" in att["text"] and "var-sweep" not in att["text"]
        assert "`monitoring/runbook.md#accuracydrop`" in att["text"]

        # r1's accuracy drop is muted by r1's divergence (same run), r2's is not.
        states = {a["labels"]["run_id"]: a["status"]
                  for a in am.alerts("?filter=alertname%3D%22AccuracyDrop%22")}
        assert states["r1"]["state"] == "suppressed" and states["r1"]["inhibitedBy"], states
        assert states["r2"]["state"] == "active", states
        time.sleep(2)  # two more group intervals: r1's group would have flushed by now
        assert not [p for p in slack.posts if "AccuracyDrop" in _text(p) and "r1" in p["attachments"][0]["title"]]

        # send_resolved: resolving the divergence sends a resolved message.
        post([_alert("LossNonFinite", "r1", "s", ends=datetime.now(timezone.utc))])
        done = slack.wait_for(lambda p: p["attachments"][0]["title"].startswith("[RESOLVED]"), 20)
        att = done["attachments"][0]
        assert att["title"] == "[RESOLVED] LossNonFinite · run r1 · sweep s"
        assert att["color"] == "good" and "*Resolved:*" in att["text"] and "<!channel>" not in att.get("pretext", "")


def test_real_alertmanager_divergence_inhibitions(tmp_path: Path) -> None:
    """An exploding loss mutes the same run's NaN page (and its diverging loss,
    gradient norm, accuracy drop) for as long as it fires; a crash mutes the
    accuracy drop. Only the same run_id and sweep are muted."""
    # The causes first, as in a real run (an explosion comes before the NaN)
    # and so the inhibitor knows them before the muted alerts' groups flush.
    causes = [
        ("LossExploding", "r1", "s"), ("LossExploding", "r3", None), ("RunFailed", "r2", None),
        # The same run_id in another sweep, and as a single run: not muted by r1/s.
        ("LossNonFinite", "r1", "s2"), ("LossNonFinite", "r1", None),
        ("TelemetrySinkFailed", "r2", None),
    ]
    muted = [
        ("LossNonFinite", "r1", "s"), ("LossDiverging", "r1", "s"), ("GradientNormExplosion", "r1", "s"),
        ("AccuracyDrop", "r1", "s"), ("AccuracyDrop", "r1", "s2"),
        ("LossNonFinite", "r3", None),  # single runs: neither side has a sweep label
        ("AccuracyDrop", "r2", None),
    ]
    control = ("AccuracyDrop", "r4", None)  # nothing of r4 fires: not muted
    expected = {k: "active" for k in [*causes, control]} | {k: "suppressed" for k in muted}

    def key(alert: dict[str, Any]) -> tuple[str, str, str | None]:
        labels = alert["labels"]
        return labels["alertname"], labels["run_id"], labels.get("sweep")

    def title(name: str, run_id: str, sweep: str | None) -> str:
        return f"[FIRING:1] {name} · run {run_id}" + (f" · sweep {sweep}" if sweep else "")

    def wait_states(want: dict[tuple[str, str, str | None], str]) -> dict[Any, dict[str, Any]]:
        deadline, got = time.monotonic() + 15, dict[Any, dict[str, Any]]()
        while time.monotonic() < deadline:
            got = {key(a): a for a in am.alerts()}
            if all(got.get(k, {}).get("status", {}).get("state") == v for k, v in want.items()):
                break
            time.sleep(0.2)
        wrong = {k: got.get(k, {}).get("status", {}).get("state") for k, v in want.items()
                 if got.get(k, {}).get("status", {}).get("state") != v}
        assert not wrong, wrong
        return got

    with _alertmanager(tmp_path) as am:
        am.post([_alert(*k) for k in causes])
        for k in causes:
            am.slack.wait_for(lambda p, want=title(*k): p["attachments"][0]["title"] == want, 20)
        am.post([_alert(*k) for k in [*muted, control]])
        got = wait_states(expected)
        fingerprint = {k: a["fingerprint"] for k, a in got.items()}
        for target, source in ((("LossNonFinite", "r1", "s"), ("LossExploding", "r1", "s")),
                               (("LossNonFinite", "r3", None), ("LossExploding", "r3", None)),
                               (("AccuracyDrop", "r2", None), ("RunFailed", "r2", None)),
                               (("AccuracyDrop", "r1", "s2"), ("LossNonFinite", "r1", "s2"))):
            assert got[target]["status"]["inhibitedBy"] == [fingerprint[source]], (target, got[target])
        am.slack.wait_for(lambda p: p["attachments"][0]["title"] == title(*control), 20)
        time.sleep(2)  # two more group intervals: a muted group would have flushed by now
        titles = {p["attachments"][0]["title"] for p in am.slack.posts}
        assert not titles & {title(*k) for k in muted}, titles

        # The explosion resolves (in Prometheus, 10 minutes after the run): the
        # NaN page it stood for is no longer muted and goes out, and it now
        # mutes the rest of the run's alerts itself.
        am.post([_alert("LossExploding", "r1", "s", ends=datetime.now(timezone.utc))])
        am.slack.wait_for(lambda p: p["attachments"][0]["title"] == title("LossNonFinite", "r1", "s"), 20)
        wait_states({("LossNonFinite", "r1", "s"): "active", ("LossDiverging", "r1", "s"): "suppressed",
                     ("GradientNormExplosion", "r1", "s"): "suppressed", ("AccuracyDrop", "r1", "s"): "suppressed"})


def test_dashboard_link_matches_committed_dashboard() -> None:
    """The Slack link names a dashboard uid and template variables that exist."""
    template = (TEMPLATES_DIR / "slack.tmpl").read_text()
    uids = set(re.findall(r"/d/([\w-]+)\?", template))
    assert len(uids) == 1, f"expected one Grafana dashboard link in the Slack template, got {uids}"
    uid, variables = uids.pop(), set(re.findall(r"var-(\w+)=", template))
    assert {"run", "sweep"} <= variables
    dashboards = {d["uid"]: d for d in (json.loads(p.read_text())
                                        for p in (ROOT / "grafana" / "dashboards").glob("*.json"))}
    assert uid in dashboards, f"no committed dashboard with uid {uid}"
    names = {v["name"] for v in dashboards[uid]["templating"]["list"]}
    assert variables <= names, f"dashboard {uid} has no variable(s) {variables - names}"


def test_real_alertmanager_perplexity_jump_inhibition(tmp_path: Path) -> None:
    """A perplexity jump after a structural change mutes the same run's
    StructuralChangesHurting (one page per incident), never the reverse, and
    no other run's."""
    jump, hurting = "PerplexityJumpAfterChange", "StructuralChangesHurting"
    with _alertmanager(tmp_path) as am:
        # The jump first, as in a real run (it is measured at the first evaluation
        # after the change, the harm only after the settle window).
        am.post([_alert(jump, "a1", "apo"), _alert(jump, "a3", None)])
        for run_id, sweep in (("a1", "apo"), ("a3", None)):
            title = f"[FIRING:1] {jump} · run {run_id}" + (f" · sweep {sweep}" if sweep else "")
            am.slack.wait_for(lambda p, t=title: p["attachments"][0]["title"] == t, 20)
        am.post([_alert(hurting, "a1", "apo"), _alert(hurting, "a2", "apo"), _alert(hurting, "a3", None)])

        def states() -> dict[tuple[str, str], dict[str, Any]]:
            return {(a["labels"]["alertname"], a["labels"]["run_id"]): a for a in am.alerts()}

        want = {(hurting, "a1"): "suppressed", (hurting, "a3"): "suppressed", (hurting, "a2"): "active",
                (jump, "a1"): "active", (jump, "a3"): "active"}
        deadline, got = time.monotonic() + 15, states()
        while time.monotonic() < deadline and any(got.get(k, {}).get("status", {}).get("state") != v
                                                   for k, v in want.items()):
            time.sleep(0.2)
            got = states()
        assert {k: got[k]["status"]["state"] for k in want} == want
        assert got[(hurting, "a1")]["status"]["inhibitedBy"] == [got[(jump, "a1")]["fingerprint"]]
        am.slack.wait_for(lambda p: p["attachments"][0]["title"] == f"[FIRING:1] {hurting} · run a2 · sweep apo", 20)
        time.sleep(2)  # two more group intervals: a muted group would have flushed by now
        titles = [p["attachments"][0]["title"] for p in am.slack.posts]
        assert not [t for t in titles if t.startswith(f"[FIRING:1] {hurting}") and ("run a1" in t or "run a3" in t)]
        assert sum(t.startswith(f"[FIRING:1] {jump}") for t in titles) == 2  # each run paged once


def test_real_alertmanager_heads_quality_inhibition(tmp_path: Path) -> None:
    """A heads run's quality breach mutes the same run's perplexity jump and
    StructuralChangesHurting (one page per incident) and no other run's; a jump
    never mutes a breach (a run whose jump came first, from another round, gets
    both pages)."""
    breach, jump, hurting = "HeadsPrunedPastQuality", "PerplexityJumpAfterChange", "StructuralChangesHurting"

    def title(name: str, run_id: str, sweep: str | None) -> str:
        return f"[FIRING:1] {name} · run {run_id}" + (f" · sweep {sweep}" if sweep else "")

    with _alertmanager(tmp_path) as am:
        # The breach first, as in a real run: it is counted at the decision round, the
        # jump at the next evaluation, the structural harm after the settle window.
        # h4's jump comes alone (a clone round, say): it must not mute h4's later breach.
        first = [(breach, "h1", "heads"), (breach, "h3", None), (jump, "h4", "heads")]
        am.post([_alert(*k) for k in first])
        for k in first:
            am.slack.wait_for(lambda p, t=title(*k): p["attachments"][0]["title"] == t, 20)
        later = [(jump, "h1", "heads"), (hurting, "h1", "heads"), (jump, "h3", None), (hurting, "h3", None),
                 (jump, "h2", "heads"), (breach, "h4", "heads")]
        am.post([_alert(*k) for k in later])

        def states() -> dict[tuple[str, str], dict[str, Any]]:
            return {(a["labels"]["alertname"], a["labels"]["run_id"]): a for a in am.alerts()}

        # h4's jump, paged before, is muted from the breach on (no reminders); the breach still pages.
        want = {(jump, "h1"): "suppressed", (hurting, "h1"): "suppressed", (jump, "h3"): "suppressed",
                (hurting, "h3"): "suppressed", (jump, "h2"): "active", (breach, "h1"): "active",
                (breach, "h3"): "active", (jump, "h4"): "suppressed", (breach, "h4"): "active"}
        deadline, got = time.monotonic() + 15, states()
        while time.monotonic() < deadline and any(got.get(k, {}).get("status", {}).get("state") != v
                                                   for k, v in want.items()):
            time.sleep(0.2)
            got = states()
        assert {k: got[k]["status"]["state"] for k in want} == want
        for run_id in ("h1", "h3"):
            by_breach, by_jump = got[(breach, run_id)]["fingerprint"], got[(jump, run_id)]["fingerprint"]
            assert got[(jump, run_id)]["status"]["inhibitedBy"] == [by_breach]
            # Alertmanager names one source: the breach, or the (itself muted) jump, which mutes it too.
            assert set(got[(hurting, run_id)]["status"]["inhibitedBy"]) <= {by_breach, by_jump}
        am.slack.wait_for(lambda p: p["attachments"][0]["title"] == title(jump, "h2", "heads"), 20)
        am.slack.wait_for(lambda p: p["attachments"][0]["title"] == title(breach, "h4", "heads"), 20)
        time.sleep(2)  # two more group intervals: a muted group would have flushed by now
        titles = [p["attachments"][0]["title"] for p in am.slack.posts]
        assert not {title(*k) for k in later[:4]} & set(titles), titles
        for k in [*first, (jump, "h2", "heads"), (breach, "h4", "heads")]:
            assert titles.count(title(*k)) == 1, (k, titles)  # each paged once
