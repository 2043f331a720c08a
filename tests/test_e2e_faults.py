"""End-to-end fault suite: every failure of every family pages once, healthy runs page nobody.

Real engine runs of each family (``seeds``, ``neurogenesis``, ``plasticity``, ``apoptosis``, ``heads``)
fail in every way the engine and its rules cover, and the real Prometheus and
Alertmanager (shipped rules, routes, inhibitions and Slack templates) must
turn each failure into exactly one critical Slack message naming the run:

=========================  =====================================================  ===============
scenario                   what happens to the run                                expected page
=========================  =====================================================  ===============
``nan_step0``              NaN loss at step 0 (before Prometheus has scraped it)  LossNonFinite
``nan_step0_production``   the same, on a second stack with the shipped timings   LossNonFinite
``nan_midrun``             NaN loss in the middle of the run                      LossNonFinite
``sigkill``                ``kill -9`` after Prometheus scraped it twice          TargetDown
``sigstop``                ``SIGSTOP`` after two scrapes (hangs, port still open) TargetDown
``loss_blowup``            learning rate scaled up mid-run (``--fault_lr_scale``)  LossExploding
``structural_harm``        seeds with the guard off, blending barely trained      StructuralChangesHurting
                           children (each blend worsens the val loss)
``perplexity_jump``        apoptosis drill: 90% of every group's most useful      PerplexityJumpAfterChange
                           units die at once
``quality_breach``         heads: a pruning round leaves the val loss above the   HeadsPrunedPastQuality
                           quality limit and is kept (pruning stops)
``exception``              an exception in the training loop                      RunFailed
``healthy``                a normal short run                                     none
``rollback``               NaN loss answered by ``--on_diverge rollback``         none
=========================  =====================================================  ===============

Each run is a ``file_sd`` target of the ``engine_trials`` job on its own port,
labelled ``sweep="faults"``, ``trial="<family>-<scenario>"``: the NaN-at-step-0
and the signalled runs are registered right before their process starts (as a
sweep does), the others when the suite starts (see ``PREREGISTERED``). The
sigkill/sigstop runs are signalled once two scrapes saw them running; a
stopped run is killed (and reaped) once paged. The fast stack scrapes, evaluates
and groups every second (``test_e2e_alerting.FAST``); the production stack is
rendered with the shipped intervals (engine scrape 5 s, evaluation 15 s,
critical ``group_wait`` 10 s). Runs are scheduled a few at a time so two cores
cope: the killed and stopped runs first (TargetDown holds ``for: 1m``), the
others while that minute passes. Every wait polls a condition with a deadline.

The table printed at the end (``pytest -s``) gives, per scenario and family:
paged or not, the critical alerts received, the number of pages, the time from
the fault (run.log line time, or the signal) to the Slack message, warnings,
exit code and final status, and how many scrapes saw the run running before
its fault; then recall (expected pages received / expected) and precision
(expected pages / all pages) per scenario and overall. Both must be 1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from _e2e import Proc, read_json, read_jsonl, run_dir_in, start, stop
from binaries import require_binary
from _char import TINY_APOPTOSIS, TINY_HEADS
from conftest import free_port
from test_e2e_alerting import QUIET, SlackMock, local_stack, production_latency, query, slack_mock

from engine.sweep.file_sd import TargetsFile
from monitoring import stack as ms

FAMILIES = ("seeds", "neurogenesis", "plasticity", "apoptosis", "heads")
SWEEP = "faults"
MAX_BUSY = 6  # runs starting up or training at once (lingering, killed and stopped ones do not count);
# 6, not more: the suite's other xdist worker shares the two cores, and with 8 a healthy run's
# final state once went unscraped within its 30 s linger under that load (a false TargetDown)
QUIET_WINDOW = 20.0  # s after a healthy/rollback run ended in which it still must page nobody
GRACE = 3.0  # s after the last expected page for stray messages (fast stack: group_interval 1 s)
DEADLINE = 420.0  # s for the whole schedule (five families, two cores)
#: (signalled, production stack) -> s after the signal (else after the exit) to give up on a page:
#: TargetDown holds 1 min; an ended run's alert fires within a scrape + an evaluation + group_wait.
PAGE_TIMEOUT = {(True, False): 120.0, (False, False): 30.0, (False, True): 60.0}


@dataclass(frozen=True)
class Family:
    """Arguments of one family's runs: ``short`` (healthy, NaN at step 0), ``mid`` (a run long
    enough to be scraped while it trains before ``step``, where the mid-run faults hit), ``long``
    (killed or stopped long before its end), ``blowup`` (the measured learning-rate drill)."""

    short: list[str]
    mid: list[str]
    step: int
    long: list[str]
    blowup: list[str]
    harm: list[str] = field(default_factory=list)  # structural changes that hurt (families that have one)


FAMILY_ARGS = {
    # 25 steps per epoch (the default run: 30 + 50 epochs).
    "seeds": Family(short=["--warm_up_epochs", "20", "--adaptation_epochs", "20"],
                    mid=["--warm_up_epochs", "60", "--adaptation_epochs", "10"], step=1000,
                    long=["--warm_up_epochs", "100000"], blowup=["--fault_lr_scale_step", "100"],
                    # Children blend after 5% reconstruction progress and learn at lr x 0.001; the
                    # guard accepts anything (tolerance 10x): blends pile up damage, streak >= 3.
                    harm=["--warm_up_epochs", "10", "--adaptation_epochs", "30", "--patience", "2",
                          "--progress_thresh", "0.05", "--child_lr_scale", "0.001", "--blend_tolerance", "10",
                          "--blend_abort", "1000", "--probation_epochs", "1"]),
    # 10 steps per base epoch, then one stage (plasticity + stability epochs) per class of --class_order.
    "neurogenesis": Family(short=["--base_epochs", "3", "--class_order", "0,2"],
                           mid=["--base_epochs", "100", "--class_order", "0", "--plasticity_epochs", "2",
                                "--stability_epochs", "2"], step=700,
                           long=["--base_epochs", "100000", "--class_order", "0,2"],
                           # Adam at 1e5x: the autoencoder's base loss stays ~6x its best (1000x only
                           # collapses it to the mean image, ~4.5x: under explode_factor 5).
                           blowup=["--base_epochs", "12", "--class_order", "0", "--fault_lr_scale_step", "60",
                                   "--fault_lr_scale", "100000"]),
    # 203 steps per task (one epoch each).
    "plasticity": Family(short=["--n_tasks", "6"], mid=["--n_tasks", "8"], step=1000,
                         long=["--n_tasks", "100000"],
                         blowup=["--n_tasks", "10", "--fault_lr_scale_step", "300", "--fault_lr_scale", "10"]),
    # A 2-block char transformer, 10 steps per evaluation, a death-and-regrowth round every 10 steps.
    # AdamW at 1000x for the blow-up: the train loss reaches ~36x its baseline. The drill kills 90%
    # of every group's most useful units at step 300 (a mechanism gone wrong): perplexity x2.1.
    "apoptosis": Family(short=[*TINY_APOPTOSIS[2:], "--max_iters", "60"],
                        mid=[*TINY_APOPTOSIS[2:], "--max_iters", "800"], step=300,
                        long=[*TINY_APOPTOSIS[2:], "--max_iters", "10000000"],
                        blowup=[*TINY_APOPTOSIS[2:], "--max_iters", "200", "--fault_lr_scale_step", "100",
                                "--fault_lr_scale", "1000"],
                        harm=[*TINY_APOPTOSIS[2:], "--max_iters", "400", "--apoptosis_drill_step", "300",
                              "--apoptosis_drill_fraction", "0.9"]),
    # The same model with four heads per block; harm: the first pruning round (~step 50) removes half
    # the heads with no tolerance: a breach, kept (a rolled-back breach is the designed stop, no page).
    "heads": Family(short=[*TINY_HEADS[2:], "--max_iters", "60"],
                    mid=[*TINY_HEADS[2:], "--max_iters", "800", "--head_mode", "none"], step=300,
                    long=[*TINY_HEADS[2:], "--max_iters", "10000000", "--head_mode", "none"],
                    blowup=[*TINY_HEADS[2:], "--max_iters", "200", "--fault_lr_scale_step", "100",
                            "--fault_lr_scale", "1000"],
                    harm=[*TINY_HEADS[2:], "--max_iters", "150", "--prune_fraction", "0.5",
                          "--quality_tolerance", "0", "--breach_action", "keep"]),
}


@dataclass(frozen=True)
class Scenario:
    name: str
    alert: str | None  # the one critical alert that must page (None: nobody may be paged)
    fault: str | None  # run.log text of the fault (its line time is the fault time); None: none or a signal
    exit_code: int  # -9: killed by the test
    status: str  # final status in metrics.json
    sig: signal.Signals | None = None
    production: bool = False
    families: tuple[str, ...] = FAMILIES

    def args(self, fam: Family) -> list[str]:
        step = str(fam.step)
        return {
            "healthy": fam.short,
            "nan_step0": [*fam.short, "--fault_nan_step", "0"],
            "nan_step0_production": [*fam.short, "--fault_nan_step", "0"],
            "nan_midrun": [*fam.mid, "--fault_nan_step", step],
            "exception": [*fam.mid, "--fault_exception_step", step],
            "rollback": [*fam.mid, "--fault_nan_step", step, "--on_diverge", "rollback"],
            "loss_blowup": fam.blowup,
            "structural_harm": fam.harm,
            "perplexity_jump": fam.harm,
            "quality_breach": fam.harm,
            "sigkill": fam.long,
            "sigstop": fam.long,
        }[self.name]


#: Scenarios whose targets are registered when the suite starts, so Prometheus scrapes their
#: endpoint from the moment it binds (it takes Prometheus up to ~10 s to start scraping a new
#: file_sd target: discovery and scrape manager each apply updates every 5 s). A mid-run fault
#: then hits a run Prometheus has seen running, as it would hit a long job, without making every
#: run ~10 s longer. The ``nan_step0`` runs are registered right before they start instead (the
#: engine's final-scrape linger must cover them), and so are the signalled runs (they are only
#: signalled once scraped).
PREREGISTERED = {"healthy", "rollback", "nan_midrun", "exception", "loss_blowup", "structural_harm", "perplexity_jump",
                 "quality_breach"}
NAN = "non-finite loss"
#: Launch order: TargetDown needs over a minute, so the signalled runs go first.
SCENARIOS = [
    Scenario("sigkill", "TargetDown", None, -9, "running", signal.SIGKILL),
    Scenario("sigstop", "TargetDown", None, -9, "running", signal.SIGSTOP),
    Scenario("nan_step0_production", "LossNonFinite", NAN, 3, "diverged", production=True),
    Scenario("healthy", None, None, 0, "finished"),
    Scenario("rollback", None, NAN, 0, "finished"),
    Scenario("nan_step0", "LossNonFinite", NAN, 3, "diverged"),
    Scenario("exception", "RunFailed", "exception injected", 1, "failed"),
    Scenario("nan_midrun", "LossNonFinite", NAN, 3, "diverged"),
    Scenario("loss_blowup", "LossExploding", "loss is exploding", 0, "finished"),
    Scenario("structural_harm", "StructuralChangesHurting", "keep hurting", 0, "finished", families=("seeds",)),
    Scenario("perplexity_jump", "PerplexityJumpAfterChange", "perplexity jumped", 0, "finished",
             families=("apoptosis",)),
    Scenario("quality_breach", "HeadsPrunedPastQuality", "pruning stops", 0, "finished", families=("heads",)),
]

_TITLE = re.compile(r"\[(FIRING|RESOLVED)(?::\d+)?\]\s+(\w+)\s+·\s+run\s+(\S+)")
_SEVERITY = re.compile(r"\*Severity:\*\s+(\w+)")
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}")


@dataclass(frozen=True)
class Message:
    """One Slack message as the shipped template renders it (one notification group)."""

    t: float
    status: str  # firing, resolved, or unparsed
    alert: str
    run_id: str
    severity: str
    body: str

    @property
    def page(self) -> bool:
        """A critical firing message (an unreadable one counts too: it would wake someone)."""
        return self.status == "unparsed" or (self.status == "firing" and self.severity != "warning")


def parse(t: float, body: dict[str, Any]) -> list[Message]:
    text = json.dumps(body, ensure_ascii=False)
    out = []
    for att in body.get("attachments") or [body]:
        m = _TITLE.search(str(att.get("title") or att.get("text") or ""))
        sev = _SEVERITY.search(str(att.get("text") or ""))
        severity = sev.group(1) if sev else ("critical" if att.get("color") == "danger" else "unknown")
        if m is None:
            out.append(Message(t, "unparsed", "?", "?", severity, text))
        else:
            out.append(Message(t, m.group(1).lower(), m.group(2), m.group(3), severity, text))
    return out


@dataclass
class Run:
    family: str
    scenario: Scenario
    out: Path
    prometheus: str
    slack: SlackMock
    port: int = 0
    proc: Proc | None = None
    tries: int = 0
    started: float = 0.0
    run_dir: Path | None = None
    run_id: str | None = None
    signalled: float | None = None
    exited: float | None = None
    rc: int | None = None
    final_status: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def trial(self) -> str:
        return f"{self.family}-{self.scenario.name}"

    @property
    def selector(self) -> str:
        return f'job="engine_trials", sweep="{SWEEP}", trial="{self.trial}"'

    def messages(self) -> list[Message]:
        return [m for t, body in list(self.slack.messages) for m in parse(t, body)
                if self.run_id and m.run_id == self.run_id]

    def pages(self) -> list[Message]:
        return [m for m in self.messages() if m.page]

    def expected_page(self) -> Message | None:
        """The first critical firing message for the expected alert, naming the run."""
        return next((m for m in self.pages() if m.status == "firing" and m.alert == self.scenario.alert
                     and self.run_id and self.run_id in m.body), None)

    def busy(self) -> bool:
        """Starting up or training (not ended, lingering, killed or stopped)."""
        if self.proc is None or self.rc is not None or self.signalled is not None:
            return False
        status = (read_json(self.run_dir / "metrics.json") or {}).get("status") if self.run_dir else None
        return status in (None, "running")

    def settled(self, now: float) -> bool:
        """Nothing more to wait for: paged and exited, or quiet long enough after its end, or the
        expected page is overdue (a failure the report shows)."""
        if self.proc is None:
            return False
        if self.scenario.alert is None:
            return self.exited is not None and now - self.exited >= QUIET_WINDOW
        if self.exited is None:
            return False
        if self.expected_page() is not None:
            return True
        signalled = self.signalled is not None  # a run to be signalled that ended by itself: from its exit
        since = self.signalled if signalled else self.exited
        return since is not None and now - since > PAGE_TIMEOUT[signalled, self.scenario.production]

    def fault_time(self) -> float | None:
        """The fault: the signal, else the run.log line time of the fault's first log record."""
        if self.scenario.sig is not None:
            return self.signalled
        if self.scenario.fault is None or self.run_dir is None or not (self.run_dir / "run.log").exists():
            return None
        stamp = None
        for line in (self.run_dir / "run.log").read_text(errors="replace").splitlines():
            if _STAMP.match(line):
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if self.scenario.fault in line and stamp is not None:
                return stamp  # a traceback line belongs to the record above it
        return None


def register(run: Run, targets: TargetsFile) -> None:
    """Give the run a free port and register it as a file_sd target (labels sweep, trial)."""
    run.port = free_port()
    targets.add(run.trial, f"127.0.0.1:{run.port}", {"sweep": SWEEP, "trial": run.trial})


def launch(run: Run, targets: TargetsFile, logs: Path) -> None:
    """Start the run on its registered port (registering it first if it is not yet: then the
    process starts at once, without waiting for Prometheus to discover the target)."""
    if not run.port:
        register(run, targets)
    run.tries += 1
    args = ["--experiment", run.family, *run.scenario.args(FAMILY_ARGS[run.family]), *QUIET,
            "--output_dir", str(run.out), "--metrics_port", str(run.port)]
    run.proc = start(args, logs / f"{run.trial}-{run.tries}")
    run.started = time.time()


def safe_query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """:func:`query`, or [] when Prometheus does not answer in time (the caller polls again)."""
    try:
        return query(prometheus, expr)
    except OSError:  # URLError, timeout, connection reset
        return []


def scraped_running(run: Run) -> bool:
    """At least two scrapes saw the run running, the last one included."""
    running = f'plasticity_run_status{{{run.selector}, status="running"}}'
    seen = safe_query(run.prometheus, f"sum_over_time({running}[1m])")
    return bool(seen and float(seen[0]["value"][1]) >= 2 and safe_query(run.prometheus, f"{running} == 1"))


def step(run: Run, targets: TargetsFile, logs: Path, now: float) -> None:
    """Advance one run: note its id and exit, signal it when due, kill a stopped one once paged."""
    assert run.proc is not None
    if run.run_dir is None:
        run.run_dir = run_dir_in(run.out)
    if run.run_id is None and run.run_dir is not None:
        run.run_id = (read_json(run.run_dir / "identity.json") or {}).get("run_id")
    if run.rc is None and run.proc.poll() is not None:
        rc = run.proc.poll()
        if rc == 2 and run.run_dir is None and run.tries < 3 and "busy" in run.proc.err():
            run.notes.append(f"port {run.port} taken before the engine bound it: relaunched")
            register(run, targets)  # the port was taken between free_port() and the bind
            launch(run, targets, logs)
            return
        run.rc, run.exited = rc, now
        if run.run_dir is not None:
            run.final_status = (read_json(run.run_dir / "metrics.json") or {}).get("status")
    sig = run.scenario.sig
    if sig is not None and run.signalled is None and run.rc is None and run.run_id and scraped_running(run):
        os.kill(run.proc.pid, sig)  # by PID: a process this test started
        run.signalled = time.time()
    if sig == signal.SIGSTOP and run.signalled is not None and run.rc is None and (
            run.expected_page() or now - run.signalled > PAGE_TIMEOUT[True, False]):
        stop(run.proc)  # SIGKILL and reap: the page is in (or overdue)


def samples(run: Run, expr: str) -> list[tuple[float, float]]:
    """Raw (time, value) samples of a range selector ``expr`` for the run (all series)."""
    return [(float(t), float(v)) for r in safe_query(run.prometheus, expr) for t, v in r.get("values", [])]


@contextmanager
def shipped_stack(workdir: Path, slack_url_file: Path, file_sd_dir: Path) -> Iterator[str]:
    """Prometheus + Alertmanager rendered with every shipped timing; yields Prometheus's URL."""
    require_binary("prometheus")
    require_binary("prometheus-alertmanager")
    try:
        services = {s.name: s for s in ms.start_local(
            workdir, prometheus_port=free_port(), alertmanager_port=free_port(),
            engine_targets=[f"127.0.0.1:{free_port()}"], file_sd_dir=file_sd_dir, slack_url_file=slack_url_file,
            ready_timeout=30)}
        yield services["prometheus"].url
    finally:
        ms.stop_local(workdir)


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def report(runs: list[Run], stray: list[Message], t0: float,
           wall: float) -> tuple[str, dict[str, tuple[int, int, int]]]:
    """The table, and per scenario (pages expected, expected pages received, all pages).

    ``t0``: the suite's start (Unix time); start/fault/end/page columns are seconds since then.
    """
    head = (f"{'scenario':<22} {'family':<13} {'paged':<5} {'alerts (critical)':<28} {'pages':>5} "
            f"{'to page s':>9} {'warnings':<22} {'exit':>4} {'status':<9} {'seen run.':>9} {'start':>5} "
            f"{'fault':>5} {'end':>5} {'page':>5} {'scrapes':>7}")
    lines = [head, "-" * len(head)]
    stats: dict[str, tuple[int, int, int]] = {}
    for sc in SCENARIOS:
        exp = rec = total = 0
        for run in (r for r in runs if r.scenario is sc):
            pages = run.pages()
            page = run.expected_page()
            fault = run.fault_time()
            warnings = sorted({m.alert for m in run.messages() if m.status == "firing" and not m.page})
            seen = None
            if fault is not None:
                seen = sum(1 for t, v in samples(run, f'plasticity_run_status{{{run.selector}, status="running"}}[15m]')
                           if v == 1 and t < fault)
            alive_until = run.signalled or run.exited or time.time()
            ups = [v for t, v in sorted(samples(run, f"up{{{run.selector}}}[15m]")) if run.started <= t <= alive_until]
            if 1.0 in ups:  # from the endpoint's first answer (after imports) to its last (before exit)
                ups = ups[ups.index(1.0):len(ups) - ups[::-1].index(1.0)]
            exp += sc.alert is not None
            rec += page is not None
            total += len(pages)
            lines.append(
                f"{sc.name:<22} {run.family:<13} {'y' if pages else 'n':<5} "
                f"{','.join(sorted({m.alert for m in pages})) or '-':<28} {len(pages):>5} "
                f"{_fmt(page.t - fault if page and fault else None):>9} {','.join(warnings) or '-':<22} "
                f"{'-' if run.rc is None else run.rc:>4} {run.final_status or '-':<9} {_fmt(seen, 'd'):>9} "
                + " ".join(f"{_fmt(t - t0 if t else None, '.0f'):>5}" for t in (run.started, fault, run.exited,
                                                                               page.t if page else None))
                + f" {sum(ups):>3.0f}/{len(ups):<3}")
        stats[sc.name] = (exp, rec, total)
    lines.append("-" * len(head))
    for name, (exp, rec, total) in stats.items():
        recall = f"{rec}/{exp} = {rec / exp:.2f}" if exp else "n/a (no page expected)"
        precision = f"{rec}/{total} = {rec / total:.2f}" if total else "n/a (no pages)"
        lines.append(f"{name:<22} recall {recall:<24} precision {precision}")
    exp, rec, total = (sum(s[i] for s in stats.values()) for i in range(3))
    total += len(stray)
    lines.append(f"{'overall':<22} recall {rec}/{exp} = {rec / exp:.2f}{'':<12} precision {rec}/{total} = "
                 f"{rec / total if total else 0:.2f}   (pages naming no run of this test: {len(stray)})")
    typical, worst = production_latency()
    lines.append(f"shipped timings, divergence -> Slack: typical {typical:.1f} s, worst {worst:.1f} s "
                 f"(plus file_sd discovery for a run that diverges before its first scrape); wall {wall:.0f} s, "
                 f"this process's CPU {time.process_time():.0f} s")
    lines.append("to page s: Slack arrival - fault (run.log line of the NaN / exception / first explosion, or "
                 "the signal); seen run.: scrapes that saw the run running before its fault; start, fault, end "
                 "(exit), page: seconds since the suite started; scrapes: successful/all from the endpoint's first "
                 "answer to its last (or the signal)")
    return "\n".join(lines), stats


def diagnose(run: Run) -> str:
    """What Prometheus held for a run whose expectation failed (for the failure message)."""
    bits = [f"{run.trial} (run_id {run.run_id}, port {run.port}, exit {run.rc}, status {run.final_status})"]
    try:
        last = query(run.prometheus, f"last_over_time(plasticity_run_status{{{run.selector}}}[15m]) == 1")
        bits.append("last exported status " + ",".join(r["metric"].get("status", "?") for r in last))
        ups = samples(run, f"up{{{run.selector}}}[15m]")
        bits.append(f"scrapes up/total {sum(v for _, v in ups):.0f}/{len(ups)}")
        expl = samples(run, f"plasticity_loss_exploding_evaluations{{{run.selector}}}[15m]")
        rows = read_jsonl(run.run_dir / "history.jsonl") if run.run_dir else []
        streaks = [int(r["loss_exploding_evaluations"]) for r in rows if r.get("loss_exploding_evaluations")]
        if expl or streaks:
            bits.append(f"loss_exploding_evaluations: max scraped {max((v for _, v in expl), default=0):g}, "
                        f"history.jsonl {len(streaks)} exploding epoch(s) {streaks[:12]}, "
                        f"epochs of {[round(r.get('duration_seconds', 0), 2) for r in rows[:4]]} s")
        if run.run_id:
            alerts = query(run.prometheus, f'ALERTS{{run_id="{run.run_id}"}}')
            bits.append("ALERTS " + (",".join(f"{a['metric']['alertname']}:{a['metric']['alertstate']}"
                                              for a in alerts) or "none"))
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        bits.append(f"(Prometheus query failed: {exc})")
    bits.append("Slack: " + (", ".join(f"{m.status}:{m.alert}:{m.severity}" for m in run.messages()) or "nothing"))
    bits += run.notes
    return "; ".join(bits)


def test_every_fault_of_every_family_pages_exactly_once(tmp_path: Path) -> None:
    t0, t0_wall = time.monotonic(), time.time()
    with slack_mock() as slack, slack_mock() as slack_prod:
        (tmp_path / "slack_url").write_text(slack.url)
        (tmp_path / "slack_url_prod").write_text(slack_prod.url)
        prod_sd, fast_sd = tmp_path / "prod" / "file_sd", tmp_path / "fast" / "file_sd"
        with shipped_stack(tmp_path / "prod" / "stack", tmp_path / "slack_url_prod", prod_sd) as prod, \
                local_stack(tmp_path / "fast" / "stack", tmp_path / "slack_url", file_sd_dir=fast_sd) as fast:
            targets = {False: TargetsFile(fast_sd / f"{SWEEP}.json"), True: TargetsFile(prod_sd / f"{SWEEP}.json")}
            runs = [Run(f, sc, tmp_path / "runs" / f"{f}-{sc.name}",
                        prod if sc.production else fast.prometheus, slack_prod if sc.production else slack)
                    for sc in SCENARIOS for f in FAMILIES if f in sc.families]
            queue = list(runs)
            for run in runs:  # see PREREGISTERED
                if run.scenario.name in PREREGISTERED:
                    register(run, targets[run.scenario.production])
            logs = tmp_path / "logs"
            try:
                deadline = time.monotonic() + DEADLINE
                settled_at: float | None = None
                while time.monotonic() < deadline:
                    now = time.time()
                    for run in runs:
                        if run.proc is not None:
                            step(run, targets[run.scenario.production], logs, now)
                    while queue and sum(r.busy() for r in runs) < MAX_BUSY:
                        run = queue.pop(0)
                        launch(run, targets[run.scenario.production], logs)
                    if not queue and all(r.settled(now) for r in runs):
                        settled_at = settled_at or time.monotonic()
                        if time.monotonic() - settled_at >= GRACE:
                            break
                    time.sleep(0.25)
                wall = time.monotonic() - t0
                known = {r.run_id for r in runs if r.run_id}
                stray = [m for t, body in list(slack.messages) + list(slack_prod.messages)
                         for m in parse(t, body) if m.page and m.run_id not in known]
                table, stats = report(runs, stray, t0_wall, wall)
                print("\n" + table)
                failures = []
                for run in runs:
                    sc, page, pages = run.scenario, run.expected_page(), run.pages()
                    why = []
                    if run.proc is None:
                        why.append("never started (deadline)")
                    if sc.alert is not None and page is None:
                        why.append(f"no {sc.alert} page")
                    extra = list(pages)
                    if page is not None:
                        extra.remove(page)  # the one expected page; any other one is extra
                    if extra:
                        why.append(f"unexpected pages {[m.alert for m in extra]}")
                    if run.proc is not None and run.rc is None:
                        why.append("still running at the deadline")
                    if run.rc is not None and run.rc != sc.exit_code:
                        err = run.proc.err()[-600:] if run.proc else ""
                        why.append(f"exit {run.rc}, expected {sc.exit_code}: {err}")
                    if run.rc is not None and sc.sig is None and run.final_status != sc.status:
                        why.append(f"final status {run.final_status}, expected {sc.status}")
                    if sc.alert is None and run.run_id and run.exited is not None:
                        if time.time() - run.exited < QUIET_WINDOW:
                            why.append(f"watched for only {time.time() - run.exited:.0f} s after its end")
                        held = safe_query(run.prometheus, f'ALERTS{{run_id="{run.run_id}", severity="critical"}}')
                        if held:
                            why.append(f"critical alerts held after it ended: {[a['metric'] for a in held]}")
                    fault = run.fault_time()
                    if sc.fault is not None and run.rc is not None and fault is None:
                        why.append(f"no {sc.fault!r} record in run.log: the drill did not fire")
                    if page is not None and fault is not None and page.t <= fault:
                        why.append(f"page at {page.t:.2f} before the fault at {fault:.2f}")
                    if why:
                        failures.append(f"{'; '.join(why)} -- {diagnose(run)}")
                if stray:
                    failures.append(f"pages naming no run of this test: {[(m.alert, m.run_id) for m in stray]}")
                exp, rec, total = (sum(s[i] for s in stats.values()) for i in range(3))
                total += len(stray)
                assert not failures, "\n".join(failures)
                assert rec == exp and rec == total, (rec, exp, total)  # recall 1, precision 1
            finally:
                for run in runs:
                    stop(run.proc)  # SIGKILL (also ends a stopped process) and reap, by PID
